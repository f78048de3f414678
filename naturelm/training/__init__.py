"""Training NatureLM with TRL's `SFTTrainer`, peft LoRA and DeepSpeed: data, augmentations, model set-up.

Needs the `train` extra (`pip install -e '.[train]'`): trl, datasets, deepspeed.
"""

from .arguments import AudioDataArguments, AudioDatasetConfig, NatureLMArguments, NatureLMParser
from .audio import AudioDecodeError, decode_audio
from .collator import NatureLMDataCollator
from .data import SCHEMA, load_text_audio_dataset, load_training_datasets, mix_datasets
from .distributed import setup_cpu_distributed
from .model import build_model_from_parts, configure_trainable_parameters, load_model_for_training
from .trainer import NatureLMSFTTrainer
from .transform import SKIP_REASONS, TextAudioTransform

__all__ = [
    "SCHEMA",
    "SKIP_REASONS",
    "AudioDataArguments",
    "AudioDatasetConfig",
    "AudioDecodeError",
    "NatureLMArguments",
    "NatureLMDataCollator",
    "NatureLMParser",
    "NatureLMSFTTrainer",
    "TextAudioTransform",
    "build_model_from_parts",
    "configure_trainable_parameters",
    "decode_audio",
    "load_model_for_training",
    "load_text_audio_dataset",
    "load_training_datasets",
    "mix_datasets",
    "setup_cpu_distributed",
]
