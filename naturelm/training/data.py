"""Text-audio training data with `datasets`: one schema for every source, loaders for the hub, local folders (audio
files + CSV/JSONL), CSV/JSON/parquet files, streaming, a weighted mixture, and the per-example transform on top.

Schema (`SCHEMA`): `audio` (the storage of `datasets.Audio(decode=False)`: `{"bytes", "path"}`), `instruction`,
`output`, `task`, `source`. Audio is decoded later, in the DataLoader workers, with soundfile (no torchcodec needed).
"""

import io
import logging
import re
from pathlib import Path

import datasets
import numpy as np
import soundfile
from datasets import Dataset, Features, IterableDataset, Value

from .arguments import AudioDataArguments, AudioDatasetConfig
from .audio import list_audio_files
from .transform import EXAMPLE_COLUMNS, REQUIRED_COLUMNS, TextAudioTransform

logger = logging.getLogger(__name__)

AUDIO_STORAGE = {"bytes": Value("binary"), "path": Value("string")}
SCHEMA = Features(
    {
        "audio": AUDIO_STORAGE,
        "instruction": Value("string"),
        "output": Value("string"),
        "task": Value("string"),
        "source": Value("string"),
    }
)
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.json", "metadata.parquet")
_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _metadata_file(folder: Path) -> Path | None:
    return next((folder / name for name in METADATA_FILES if (folder / name).is_file()), None)


def _is_csv(config: AudioDatasetConfig) -> bool:
    """Whether `load_dataset` will read the config's source with its CSV (pandas) builder."""
    files = config.data_files if isinstance(config.data_files, (list, tuple)) else [config.data_files]
    names = [config.path, *(f for f in files if isinstance(f, str))]
    return config.path == "csv" or any(name.lower().endswith(".csv") for name in names)


# pandas reads "None", "NA", "null", "" ... as missing values; "None" is the answer for "nothing calling", and an empty
# cell must read as an empty answer (skipped as `empty_answer`), so CSV cells are kept as they are written.
CSV_KWARGS = {"keep_default_na": False}


def _load_raw(config: AudioDatasetConfig, streaming: bool) -> tuple[Dataset | IterableDataset, Path | None]:
    """`datasets.load_dataset` for the config; returns the dataset and the folder relative audio paths start from."""
    path = Path(config.path)
    if path.is_dir() and config.data_files is None and _metadata_file(path) is not None:
        metadata = _metadata_file(path)  # a local folder: audio files + metadata table (the audiofolder layout)
        builder = _BUILDERS[metadata.suffix]
        dataset = datasets.load_dataset(builder, data_files=str(metadata), split="train", streaming=streaming,
                                        **(CSV_KWARGS if builder == "csv" else {}))
        return dataset, path.resolve()
    dataset = datasets.load_dataset(
        config.path,
        name=config.name,
        data_dir=config.data_dir,
        data_files=config.data_files,
        split=config.split,
        streaming=streaming,
        **(CSV_KWARGS if _is_csv(config) else {}),
    )
    base = None
    if config.path in ("csv", "json", "parquet") and isinstance(config.data_files, str):
        base = Path(config.data_files).resolve().parent
    elif path.is_dir():
        base = path.resolve()
    return dataset, base


def _encode_array(array, sampling_rate: int | None) -> dict:
    """A raw numeric clip -> FLAC bytes in the schema's audio storage."""
    if sampling_rate is None:
        raise ValueError("Raw audio arrays need `sampling_rate` in the dataset config.")
    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(array, dtype=np.float32), int(sampling_rate), format="FLAC")
    return {"bytes": buffer.getvalue(), "path": None}


def _audio_storage(value, base: Path | None, sampling_rate: int | None) -> dict | None:
    """Any audio value a source can hold -> `{"bytes", "path"}` (relative paths resolved against `base`)."""
    if value is None or value == "":  # an empty CSV cell
        return None
    if isinstance(value, str):
        value = {"bytes": None, "path": value}
    if isinstance(value, dict) and "array" in value:
        return _encode_array(value["array"], value.get("sampling_rate") or sampling_rate)
    if isinstance(value, dict):
        path = value.get("path")
        if path and not value.get("bytes") and base is not None and not Path(path).is_absolute():
            path = str(base / path)
        return {"bytes": value.get("bytes"), "path": path}
    return _encode_array(value, sampling_rate)


def load_text_audio_dataset(config: AudioDatasetConfig, streaming: bool = False) -> Dataset | IterableDataset:
    """
    Loads one source and maps it onto `SCHEMA`.

    A column the schema needs and the source lacks (after `column_mapping`, and `file_name` read as `audio` like
    audiofolder does) stops here with its name: that is a configuration error, not a bad row.
    """
    dataset, base = _load_raw(config, streaming)
    if config.columns is not None:
        dataset = dataset.select_columns(config.columns)
    names = list(dataset.column_names or next(iter(dataset)).keys())
    mapping = dict(config.column_mapping or {})
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise ValueError(f"column_mapping of {config.path!r} names columns {unknown} it does not have: {names}")
    if "audio" not in mapping.values() and "audio" not in names and "file_name" in names:
        mapping["file_name"] = "audio"
    renamed = [mapping.get(name, name) for name in names]
    missing = [column for column in REQUIRED_COLUMNS if column not in renamed]
    if missing:
        raise ValueError(f"Dataset {config.path!r} has no column {missing} (columns: {names}); map them with "
                         "`column_mapping`, e.g. {'answer': 'output'}.")
    inverse = {target: name for name, target in mapping.items()}
    column = {target: inverse.get(target, target) for target in SCHEMA}
    default_source = config.source or config.path
    if isinstance((dataset.features or {}).get(column["audio"]), datasets.Audio):  # stored audio: keep the bytes
        dataset = dataset.cast_column(column["audio"], datasets.Audio(decode=False))

    def normalise(batch: dict[str, list]) -> dict[str, list]:
        size = len(batch[column["audio"]])
        task = batch.get(column["task"]) if column["task"] in batch else None
        source = batch.get(column["source"]) if column["source"] in batch else None
        rates = batch.get("sampling_rate") or [config.sampling_rate] * size  # raw arrays: per row, or the config's
        return {
            "audio": [_audio_storage(value, base, rate or config.sampling_rate)
                      for value, rate in zip(batch[column["audio"]], rates)],
            "instruction": [value if value != "" else None for value in batch[column["instruction"]]],
            "output": [None if value is None else str(value) for value in batch[column["output"]]],
            "task": [t if t is not None else (config.task or "") for t in task] if task else [config.task or ""] * size,
            "source": [s or default_source for s in source] if source else [default_source] * size,
        }

    kwargs = {} if streaming else {"desc": f"Normalising {config.path}"}
    dataset = dataset.map(normalise, batched=True, remove_columns=names, features=SCHEMA, **kwargs)
    if config.task_pattern is not None:
        pattern = re.compile(config.task_pattern)
        dataset = dataset.filter(lambda task: pattern.search(task or "") is not None, input_columns="task")
    return dataset


def mix_datasets(
    sources: list[Dataset | IterableDataset], weights: list[float], seed: int, stopping_strategy: str
) -> Dataset | IterableDataset:
    """A weighted mixture (`datasets.interleave_datasets`): each example comes from source i with probability
    `weights[i] / sum(weights)`; `all_exhausted` oversamples the smaller sources until every one was seen."""
    if len(sources) == 1:
        return sources[0]
    probabilities = [w / sum(weights) for w in weights]
    return datasets.interleave_datasets(
        sources, probabilities=probabilities, seed=seed, stopping_strategy=stopping_strategy
    )


def build_transform(data_args: AudioDataArguments, seed: int, training: bool) -> TextAudioTransform:
    """The transform of the data arguments; noise folders are listed once here."""
    noise_files = list_audio_files(data_args.noise_dirs) if training and data_args.noise_dirs else []
    if training and data_args.noise_dirs and not noise_files:
        raise ValueError(f"No audio files under noise_dirs {data_args.noise_dirs}.")
    rates = {c.sampling_rate for c in data_args.datasets if c.sampling_rate is not None}
    return TextAudioTransform(
        seed=seed,
        training=training,
        max_seconds=data_args.audio_max_seconds,
        random_crop=data_args.random_crop,
        noise_files=noise_files,
        noise_prob=data_args.noise_prob if training else 0.0,
        noise_snr_db=tuple(data_args.noise_snr_db),
        noise_exclude_task_pattern=data_args.noise_exclude_task_pattern,
        mixup_prob=data_args.mixup_prob if training else 0.0,
        mixup_max_partners=data_args.mixup_max_partners,
        mixup_task_pattern=data_args.mixup_task_pattern,
        noise_replace_prob=data_args.noise_replace_prob if training else 0.0,
        noise_replace_task_pattern=data_args.noise_replace_task_pattern,
        sampling_rate=rates.pop() if len(rates) == 1 else None,
    )


def apply_transform(dataset: Dataset | IterableDataset, transform: TextAudioTransform) -> Dataset | IterableDataset:
    """Map-style: `with_transform` (decoding happens on access, in the DataLoader workers); streamed: a lazy batched
    `map` that drops bad rows."""
    if isinstance(dataset, IterableDataset):
        return dataset.map(transform.stream, batched=True, batch_size=16, remove_columns=list(SCHEMA))
    return dataset.with_transform(transform.bind(dataset))


def load_training_datasets(
    data_args: AudioDataArguments, seed: int
) -> tuple[Dataset | IterableDataset, Dataset | None, TextAudioTransform]:
    """
    Everything the trainer needs from the data arguments: the (mixed, shuffled if streamed) training set with its
    transform, the held-out evaluation set (`test_split_size`), and the training transform (its epoch is advanced by
    the trainer).
    """
    if not data_args.datasets:
        raise ValueError("No training data: give at least one entry under `datasets`.")
    sources = [load_text_audio_dataset(config, data_args.streaming) for config in data_args.datasets]
    mixture = mix_datasets(sources, [c.weight for c in data_args.datasets], seed, data_args.stopping_strategy)
    eval_dataset = None
    if data_args.test_split_size is not None:
        if data_args.streaming:
            raise ValueError("test_split_size needs map-style data; it is not supported with streaming.")
        split = mixture.train_test_split(test_size=data_args.test_split_size, seed=seed)
        mixture, eval_dataset = split["train"], split["test"]
        eval_dataset = apply_transform(eval_dataset, build_transform(data_args, seed, training=False))
    if data_args.streaming:
        mixture = mixture.shuffle(seed=seed, buffer_size=data_args.shuffle_buffer_size)
    augmentation_seed = seed if data_args.augmentation_seed is None else data_args.augmentation_seed
    transform = build_transform(data_args, augmentation_seed, training=True)
    return apply_transform(mixture, transform), eval_dataset, transform


__all__ = [
    "EXAMPLE_COLUMNS",
    "METADATA_FILES",
    "SCHEMA",
    "apply_transform",
    "build_transform",
    "load_text_audio_dataset",
    "load_training_datasets",
    "mix_datasets",
]
