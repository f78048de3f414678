"""
Reading BEANS-Zero with `datasets`: from the Hub, a `save_to_disk` folder or local parquet, optionally streamed; row
selection by component with a per-component limit; and turning a row into a checked example or a `BadRow`.

The schema (one row per clip): `id`, `dataset_name` (the component), `audio` (list of floats), `metadata` (JSON with
`sample_rate` and `duration`), `instruction` (with the `<Audio><AudioHere></Audio>` placeholder), `instruction_text`,
`output` (the reference answer), `task`, plus `source_dataset`, `file_name`, `created_at`, `license`.
"""

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from processing_naturelm import AUDIO_PLACEHOLDER

from .components import COMPONENTS, BeansZeroComponent, get_component, instruction_for
from .errors import EvaluationError
from .predictions import BadRow

HUB_ID = "EarthSpeciesProject/BEANS-Zero"
REQUIRED_COLUMNS = ("id", "dataset_name", "audio", "metadata", "instruction", "output", "task")


def load_beans_zero(source: str = HUB_ID, split: str = "test", streaming: bool = False):
    """
    Opens BEANS-Zero.

    Args:
        source (`str`, defaults to the Hub id): a Hub dataset id, a folder written by `save_to_disk` (a `Dataset` or
            a `DatasetDict`), a parquet file, a folder of parquet files, or a glob of them.
        split (`str`, defaults to `"test"`): the split of a Hub dataset or `DatasetDict`.
        streaming (`bool`): return an `IterableDataset` that reads rows as they are needed.

    Returns:
        `datasets.Dataset` or `datasets.IterableDataset`.
    """
    import datasets

    path = Path(source)
    try:
        if path.is_dir() and any((path / name).exists() for name in ("state.json", "dataset_dict.json")):
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise EvaluationError(f"{path} has splits {sorted(dataset)}, not {split!r}.")
                dataset = dataset[split]
            if streaming:
                dataset = dataset.to_iterable_dataset()
        elif path.exists() or any(c in source for c in "*?["):
            files = sorted(str(p) for p in path.rglob("*.parquet")) if path.is_dir() else [source]
            if not files:
                raise EvaluationError(f"{path} is neither a `save_to_disk` folder nor holds parquet files.")
            dataset = datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming)
        else:
            dataset = datasets.load_dataset(source, split=split, streaming=streaming)
    except EvaluationError:
        raise
    except Exception as error:  # datasets raises many types for "not here / not reachable"
        raise EvaluationError(
            f"Cannot open the BEANS-Zero dataset {source!r} ({type(error).__name__}: {str(error).splitlines()[0]}). "
            f"Pass --dataset a local copy: on a machine with internet, `datasets.load_dataset({HUB_ID!r}, "
            "split='test').save_to_disk(DIR)`, or download its parquet files."
        ) from error
    columns = dataset.column_names
    missing = [column for column in REQUIRED_COLUMNS if columns is not None and column not in columns]
    if missing:
        raise EvaluationError(f"{source} lacks the BEANS-Zero column(s) {', '.join(missing)} (has {columns}).")
    return dataset


def _check_components(components: Sequence[str] | None) -> list[str] | None:
    if components is None:
        return None
    try:
        return [get_component(name).name for name in components]
    except KeyError as error:
        raise EvaluationError(error.args[0]) from None


def iter_rows(dataset, components: Sequence[str] | None = None, limit: int | None = None) -> Iterator[dict]:
    """
    The rows to run, in dataset order: those of `components` (all by default, including rows of unknown components,
    which then become bad rows), at most `limit` per component. Audio comes as numpy arrays.
    """
    import datasets

    wanted = _check_components(components)
    if limit is not None and limit < 1:
        raise EvaluationError(f"--limit must be positive, got {limit}.")
    if isinstance(dataset, datasets.Dataset):
        counts: dict[str, int] = {}
        indices = []
        for index, name in enumerate(dataset["dataset_name"]):
            if wanted is not None and name not in wanted:
                continue
            counts[name] = counts.get(name, 0) + 1
            if limit is None or counts[name] <= limit:
                indices.append(index)
        rows = dataset.select(indices).with_format("numpy", columns=["audio"], output_all_columns=True)
        yield from rows
        return
    counts = {}
    for row in dataset.with_format("numpy"):
        name = row.get("dataset_name")
        name = str(name) if name is not None else None
        if wanted is not None and name not in wanted:
            continue
        counts[name] = counts.get(name, 0) + 1
        if limit is not None and counts[name] > limit:
            if wanted is not None and all(counts.get(n, 0) >= limit for n in wanted):
                return
            continue
        yield {key: str(value) if isinstance(value, str) else value for key, value in row.items()}


def component_label_sets(dataset, components: Sequence[str] | None = None) -> dict[str, list[str]] | None:
    """The candidate labels of every (selected) classification and detection component: its distinct `output`s over
    the whole dataset. `None` for a streamed dataset, whose labels are then taken from the scored rows."""
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        return None
    wanted = set(_check_components(components) or COMPONENTS)
    labels: dict[str, set[str]] = {}
    for name, output in zip(dataset["dataset_name"], dataset["output"]):
        if name in wanted and name in COMPONENTS and COMPONENTS[name].task != "captioning" and isinstance(output, str):
            labels.setdefault(name, set()).add(output)
    return {name: sorted(labels[name]) for name in COMPONENTS if name in labels}


@dataclass
class BeansZeroExample:
    """A checked row: the instruction the original evaluation sent, the reference and the mono float64 audio."""

    id: str
    component: BeansZeroComponent
    instruction: str
    label: str
    audio: np.ndarray
    sampling_rate: int


def parse_row(row: dict) -> BeansZeroExample | BadRow:
    """A `BeansZeroExample`, or a `BadRow` saying what is wrong (missing field, empty audio, unknown component,
    unreadable metadata, ...)."""
    row_id = row.get("id") if isinstance(row.get("id"), str) and row.get("id") else None
    name = row.get("dataset_name") if isinstance(row.get("dataset_name"), str) else None

    def bad(reason: str) -> BadRow:
        return BadRow(row_id, name, reason)

    missing = [column for column in REQUIRED_COLUMNS if row.get(column) is None]
    if row_id is None and "id" not in missing:
        missing.insert(0, "id")
    if missing:
        return bad(f"missing {', '.join(missing)}")
    if name not in COMPONENTS:
        return bad(f"unknown component {row['dataset_name']!r}")
    for column in ("instruction", "output", "metadata"):
        if not isinstance(row[column], str):
            return bad(f"{column} is not a string (got {type(row[column]).__name__})")
    try:
        metadata = json.loads(row["metadata"])
        sampling_rate = metadata["sample_rate"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return bad("metadata is not JSON with a sample_rate")
    if isinstance(sampling_rate, float) and sampling_rate.is_integer():
        sampling_rate = int(sampling_rate)
    if not isinstance(sampling_rate, int) or isinstance(sampling_rate, bool) or sampling_rate <= 0:
        return bad(f"metadata sample_rate {sampling_rate!r} is not a positive integer")
    try:
        audio = np.asarray(row["audio"], dtype=np.float64)
    except (TypeError, ValueError):
        return bad("audio is not a list of numbers")
    if audio.ndim != 1:
        return bad(f"audio has shape {audio.shape}, expected one channel")
    if audio.size == 0:
        return bad("empty audio")
    if not np.isfinite(audio).all():
        return bad("audio has NaN or infinite samples")
    component = COMPONENTS[name]
    instruction = instruction_for(component, row["instruction"])
    if instruction.count(AUDIO_PLACEHOLDER) != 1:
        return bad(f"instruction has {instruction.count(AUDIO_PLACEHOLDER)} audio placeholders, expected 1")
    return BeansZeroExample(row_id, component, instruction, row["output"], audio, sampling_rate)


__all__ = [
    "HUB_ID",
    "REQUIRED_COLUMNS",
    "BeansZeroExample",
    "component_label_sets",
    "iter_rows",
    "load_beans_zero",
    "parse_row",
]
