"""Argument dataclasses of the training script, parsed by `trl.TrlParser` next to `SFTConfig` and `ModelConfig`.

`ModelConfig` (TRL) holds the model path, dtype and the LoRA settings (`use_peft`, `lora_r`, `lora_alpha`,
`lora_dropout`, `lora_target_modules`); these classes add what TRL has no field for: how to build NatureLM from its
parts, which towers to train, and the audio datasets with their augmentations.
"""

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser
from trl.scripts.utils import DatasetConfig, DatasetMixtureConfig

from ..loading import RELEASED_BASE_MODEL


@dataclass
class NatureLMArguments:
    """
    How to build the model and which parts to train.

    Args:
        text_model_name_or_path (`str`, defaults to `"meta-llama/Llama-3.1-8B-Instruct"`):
            The base Llama: the language model of a fresh NatureLM (no `model_name_or_path`), and the source of the
            frozen LM weights when `model_name_or_path` is an original-layout NatureLM checkpoint.
        audio_encoder_name_or_path (`str`, *optional*):
            A BEATs checkpoint (`.pt` with `cfg` and `model`, e.g. `BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt`)
            for a fresh NatureLM; required when `model_name_or_path` is not set.
        train_audio_encoder (`bool`, defaults to `False`): fine-tune BEATs (the paper does, in both stages).
        train_audio_projector (`bool`, defaults to `True`): train the window Q-Former, its queries and projection.
        train_language_model (`bool`, defaults to `False`): fully fine-tune the Llama weights (besides any LoRA).
        qformer_config (`str`, *optional*): Q-Former sizes of a fresh model, as a JSON file or string (e.g.
            `{"hidden_size": 768, "num_hidden_layers": 2}`); defaults to the original's bert-base sizes.
        merged_output_dir (`str`, *optional*): also save a copy with the LoRA adapter merged into the weights here.
    """

    text_model_name_or_path: str = field(
        default=RELEASED_BASE_MODEL,
        metadata={"help": "Base Llama of a fresh model, or of an original-layout checkpoint's frozen LM weights."},
    )
    audio_encoder_name_or_path: str | None = field(
        default=None, metadata={"help": "BEATs checkpoint (.pt) for a fresh model (no model_name_or_path)."}
    )
    train_audio_encoder: bool = field(default=False, metadata={"help": "Fine-tune the BEATs audio encoder."})
    train_audio_projector: bool = field(default=True, metadata={"help": "Train the window Q-Former projector."})
    train_language_model: bool = field(default=False, metadata={"help": "Fully fine-tune the Llama weights."})

    def qformer_overrides(self) -> dict | None:
        if self.qformer_config is None:
            return None
        text = self.qformer_config
        return json.loads(text if text.lstrip().startswith("{") else Path(text).read_text())
    qformer_config: str | None = field(
        default=None, metadata={"help": "Q-Former sizes of a fresh model (JSON file or string); bert-base if unset."}
    )
    merged_output_dir: str | None = field(
        default=None, metadata={"help": "Also save a copy with the LoRA adapter merged into the weights here."}
    )


@dataclass
class AudioDatasetConfig(DatasetConfig):
    """
    One source of text-audio pairs: the arguments of `datasets.load_dataset` (TRL's `DatasetConfig`) plus how to map
    it onto the NatureLM schema (`audio`, `instruction`, `output`, `task`, `source`).

    `path` is a hub id, a builder name (`csv`, `json`, `parquet`) with `data_files`, or a local folder of audio files
    with a `metadata.csv` / `metadata.jsonl` whose `file_name` (or `audio`) column holds paths relative to the folder.

    Args:
        weight (`float`, defaults to 1.0): sampling weight in the mixture (normalised over all datasets).
        column_mapping (`dict[str, str]`, *optional*): renames, `{column in the data: schema name}`.
        task (`str`, *optional*): task of every row when the data has no `task` column.
        source (`str`, *optional*): value of the `source` column when the data has none (defaults to `path`).
        task_pattern (`str`, *optional*): keep only rows whose `task` matches this regular expression (`re.search`).
        sampling_rate (`int`, *optional*): rate of raw numeric audio arrays without a `sampling_rate` column (files
            carry their own).
    """

    weight: float = 1.0
    column_mapping: dict[str, str] | None = None
    task: str | None = None
    source: str | None = None
    task_pattern: str | None = None
    sampling_rate: int | None = None

    def __post_init__(self):
        if self.fraction is not None:
            raise ValueError("`fraction` is not supported for audio datasets; give each dataset a sampling `weight`.")
        if not self.weight > 0:
            raise ValueError(f"Dataset {self.path!r} has weight {self.weight}; weights must be positive.")


@dataclass
class AudioDataArguments(DatasetMixtureConfig):
    """
    The datasets, how they are mixed and the paper's augmentations.

    Args:
        datasets (`list[AudioDatasetConfig]`): the sources: a YAML list of mappings, or on the command line paths
            and JSON objects (`--datasets data/mine '{"path": "data/other", "weight": 0.5}'`).
        streaming (`bool`, defaults to `False`): stream every source (large sets; needs `max_steps`).
        test_split_size (`float`, *optional*): hold out this share (or count) of a map-style mixture for evaluation.
        stopping_strategy (`str`, defaults to `"all_exhausted"`): `datasets.interleave_datasets` strategy of a mixture.
        shuffle_buffer_size (`int`, defaults to 10000): shuffle buffer of streamed data.
        audio_max_seconds (`float`, defaults to 10.0): clips longer than this are cropped (the model sees 10 s).
        random_crop (`bool`, defaults to `True`): crop a random window of long clips in training (the start in eval).
        noise_dirs (`list[str]`): folders of background-noise recordings.
        noise_prob (`float`, defaults to 0.0): chance of mixing a noise recording into a clip.
        noise_snr_db (`list[float]`, defaults to `[-10, 25]`): range of the mixing signal-to-noise ratio in dB.
        noise_exclude_task_pattern (`str`): tasks whose audio is never noised (captions and QA describe the audio).
        mixup_prob (`float`, defaults to 0.0): chance of mixing a detection clip with other clips of its task.
        mixup_max_partners (`int`, defaults to 2): up to this many partners; their labels are merged into the answer.
        mixup_task_pattern (`str`, defaults to `"detection"`): tasks mixup applies to.
        noise_replace_prob (`float`, defaults to 0.0): chance of replacing a detection clip by noise, answer "None".
        noise_replace_task_pattern (`str`, defaults to `"detection$"`): tasks the replacement applies to.
        augmentation_seed (`int`, *optional*): seed of the augmentations (defaults to the training `seed`).
    """

    datasets: list[AudioDatasetConfig] = field(default_factory=list, metadata={"help": "The datasets (YAML list)."})
    stopping_strategy: str = field(
        default="all_exhausted", metadata={"help": "interleave_datasets strategy: all_exhausted or first_exhausted."}
    )
    shuffle_buffer_size: int = field(default=10000, metadata={"help": "Shuffle buffer of streamed data."})
    audio_max_seconds: float = field(default=10.0, metadata={"help": "Longer clips are cropped to this length."})
    random_crop: bool = field(default=True, metadata={"help": "Crop long clips at a random offset in training."})
    noise_dirs: list[str] = field(default_factory=list, metadata={"help": "Folders of background-noise recordings."})
    noise_prob: float = field(default=0.0, metadata={"help": "Chance of mixing background noise into a clip."})
    noise_snr_db: list[float] = field(default_factory=lambda: [-10.0, 25.0], metadata={"help": "SNR range in dB."})
    noise_exclude_task_pattern: str = field(
        default="caption|qa|icl|instruction", metadata={"help": "Tasks never noised (regular expression)."}
    )
    mixup_prob: float = field(default=0.0, metadata={"help": "Chance of mixup for detection tasks."})
    mixup_max_partners: int = field(default=2, metadata={"help": "Up to this many mixup partners."})
    mixup_task_pattern: str = field(default="detection", metadata={"help": "Tasks mixup applies to (regex)."})
    noise_replace_prob: float = field(
        default=0.0, metadata={"help": "Chance of replacing a detection clip by noise with the answer 'None'."}
    )
    noise_replace_task_pattern: str = field(default="detection$", metadata={"help": "Tasks of the replacement."})
    augmentation_seed: int | None = field(default=None, metadata={"help": "Defaults to the training seed."})

    def __post_init__(self):
        allowed = {f.name for f in dataclasses.fields(AudioDatasetConfig)}
        for index, entry in enumerate(self.datasets):
            if isinstance(entry, AudioDatasetConfig) and entry.path.lstrip().startswith("{"):
                entry = json.loads(entry.path)  # `--datasets '{"path": ..., "weight": ...}'` on the command line
            if isinstance(entry, dict):
                unknown = sorted(set(entry) - allowed)
                if unknown:
                    raise ValueError(
                        f"Unknown key(s) {unknown} in datasets[{index}]; allowed keys are {sorted(allowed)}."
                    )
                self.datasets[index] = AudioDatasetConfig(**entry)
        if self.stopping_strategy not in ("all_exhausted", "first_exhausted"):
            raise ValueError(
                f"stopping_strategy must be all_exhausted or first_exhausted, got {self.stopping_strategy!r}."
            )
        if len(self.noise_snr_db) != 2 or self.noise_snr_db[0] > self.noise_snr_db[1]:
            raise ValueError(f"noise_snr_db must be [low, high] with low <= high, got {self.noise_snr_db}.")
        for name in ("noise_prob", "mixup_prob", "noise_replace_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}.")
        if (self.noise_prob > 0 or self.noise_replace_prob > 0) and not self.noise_dirs:
            raise ValueError("noise_prob and noise_replace_prob need noise_dirs (folders of noise recordings).")
        if self.mixup_max_partners < 1:
            raise ValueError(f"mixup_max_partners must be at least 1, got {self.mixup_max_partners}.")


class NatureLMParser(TrlParser):
    """`TrlParser` (YAML recipe + command-line overrides) that rejects unknown keys before any argument class is
    built: `TrlParser` reports them only after the dataclasses' own checks ran, so a typo in a bf16 recipe read on a
    CPU machine would surface as a bf16 error instead of naming the key."""

    def set_defaults_with_config(self, **kwargs) -> list[str]:
        remaining = super().set_defaults_with_config(**kwargs)
        if remaining:
            raise ValueError(f"Unknown key(s) in the config file: {sorted(remaining[::2])}.")
        return remaining

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False, **kwargs):
        if not return_remaining_strings:
            _, unknown = self.parse_known_args(args=args)
            if unknown:
                raise ValueError(f"Unknown command-line argument(s): {unknown}.")
        return super().parse_args_into_dataclasses(args=args, return_remaining_strings=return_remaining_strings,
                                                   **kwargs)


__all__ = ["AudioDataArguments", "AudioDatasetConfig", "NatureLMArguments", "NatureLMParser"]
