"""The model side of training: where the starting weights come from, and which parameters train.

Two starting points:
- a NatureLM checkpoint (`model_name_or_path`): a converted folder (e.g. a previous stage's output) or the released
  original-layout checkpoint with its base Llama, loaded by `naturelm.loading.load`;
- a fresh NatureLM from its parts (`audio_encoder_name_or_path` + `text_model_name_or_path`): a BEATs checkpoint, a
  new window Q-Former, and a base Llama (plus the `[PAD]` token the original added), as the paper's stage 1 starts.
"""

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate import PartialState, init_empty_weights
from peft import LoraConfig
from transformers import AutoModelForCausalLM, GenerationConfig
from transformers.integrations import deepspeed as hf_deepspeed
from trl import ModelConfig, get_peft_config

from configuration_naturelm import NatureLMConfig
from ..convert import LORA_TARGET_MODULES, convert_state_dict, finish_model, language_model_targets, load_tokenizer
from ..loading import load
from modeling_naturelm import NatureLMBeatsModel, NatureLMForConditionalGeneration, NatureLMWindowQFormerProjector
from processing_naturelm import NatureLMProcessor
from .arguments import NatureLMArguments

logger = logging.getLogger(__name__)

_REGEX_CHARACTERS = re.compile(r"[\\.*+?()\[\]|^$]")


def _dtype(name: str | None) -> torch.dtype:
    if name in (None, "auto"):
        return torch.float32
    return getattr(torch, name) if isinstance(name, str) else name


@contextmanager
def zero3_init_disabled() -> Iterator[None]:
    """Builds models the ordinary way even when the run uses ZeRO-3: DeepSpeed partitions the parameters when its
    engine starts. (`zero.Init`, which transformers otherwise wraps model construction in, cannot build a NatureLM
    whose language model is swapped in or that is first created on the meta device.) The cost: until training starts
    each rank holds a full copy in host memory."""
    if not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    # transformers keeps the active DeepSpeed config behind a module-level weak reference (set by TrainingArguments
    # or by accelerate's DeepSpeed plugin); it is put back exactly as it was.
    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = reference


def load_model_for_training(
    model_args: ModelConfig, naturelm_args: NatureLMArguments
) -> tuple[NatureLMForConditionalGeneration, NatureLMProcessor]:
    """The starting model and its processor, from a NatureLM checkpoint or from BEATs + Llama (built in host memory
    even under ZeRO-3, see [`zero3_init_disabled`])."""
    dtype = _dtype(model_args.dtype)
    with zero3_init_disabled():
        if model_args.model_name_or_path:
            if naturelm_args.audio_encoder_name_or_path:
                raise ValueError("Give either model_name_or_path (a NatureLM checkpoint) or audio_encoder_name_or_path "
                                 "(a fresh model from BEATs + Llama), not both.")
            return load(model_args.model_name_or_path, base_model=naturelm_args.text_model_name_or_path, dtype=dtype,
                        training=True, **_qlora_kwargs(model_args))
        if not naturelm_args.audio_encoder_name_or_path:
            raise ValueError("No starting weights: set model_name_or_path (a NatureLM checkpoint) or "
                             "audio_encoder_name_or_path + text_model_name_or_path (BEATs + Llama).")
        return build_model_from_parts(
            naturelm_args.text_model_name_or_path,
            naturelm_args.audio_encoder_name_or_path,
            dtype=dtype,
            qformer_config=naturelm_args.qformer_overrides(),
        )


def _qlora_kwargs(model_args: ModelConfig) -> dict:
    """QLoRA (TRL's `load_in_4bit` / `load_in_8bit`): the loader's `nf4` / `int8`, the frozen language model quantized
    while the checkpoint is read onto this process's device, the adapter kept as a LoRA on it (TRL's SFTTrainer trains it in bf16, as the
    QLoRA paper does);
    BEATs, the Q-Former and `lm_head` are never quantized."""
    if model_args.load_in_4bit and model_args.load_in_8bit:
        raise ValueError("Choose one of load_in_4bit and load_in_8bit.")
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return {}
    if not model_args.use_peft:
        raise ValueError("A 4/8-bit language model trains only through a LoRA adapter: set use_peft: true.")
    device = f"cuda:{PartialState().local_process_index}" if torch.cuda.is_available() else "cpu"
    return {"quantize": "nf4" if model_args.load_in_4bit else "int8", "device": device}


def load_beats_checkpoint(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """A Microsoft BEATs checkpoint (`{"cfg": ..., "model": state_dict}`) -> (config kwargs, state dict in this
    package's names, relative to `NatureLMBeatsModel`)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "cfg" not in checkpoint or "model" not in checkpoint:
        raise ValueError(f"{path} is not a BEATs checkpoint (expected a dict with 'cfg' and 'model').")
    renamed = convert_state_dict({f"beats.{key}": value for key, value in checkpoint["model"].items()})
    prefix = "model.audio_tower."
    return dict(checkpoint["cfg"]), {key[len(prefix):]: value for key, value in renamed.items()}


def build_model_from_parts(
    text_model: str, audio_encoder: str, dtype: torch.dtype = torch.float32, qformer_config: dict | None = None
) -> tuple[NatureLMForConditionalGeneration, NatureLMProcessor]:
    """
    A fresh NatureLM: BEATs weights from `audio_encoder`, the language model from `text_model` (a Llama folder or hub
    id) with the original's `[PAD]` token appended (its embedding and LM-head rows start at the mean of the others),
    and a randomly initialised window Q-Former (bert-base sizes by default, as the original) and projection.
    """
    tokenizer = load_tokenizer(text_model)
    language_model = AutoModelForCausalLM.from_pretrained(text_model, dtype=dtype)
    if language_model.get_input_embeddings().num_embeddings < len(tokenizer):
        language_model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    language_model.config.pad_token_id = tokenizer.pad_token_id

    beats_kwargs, beats_state = load_beats_checkpoint(audio_encoder)
    qformer = {**(qformer_config or {}), "encoder_hidden_size": beats_kwargs["encoder_embed_dim"]}
    config = NatureLMConfig(
        audio_config=beats_kwargs, qformer_config=qformer, text_config=language_model.config.to_dict()
    )
    with init_empty_weights():
        model = NatureLMForConditionalGeneration(config)
    model.model.language_model = language_model.model
    model.lm_head = language_model.lm_head
    model.model.audio_tower = NatureLMBeatsModel(config.audio_config)
    model.model.audio_tower.load_state_dict(beats_state, strict=True)
    model.model.audio_projector = NatureLMWindowQFormerProjector(config)
    model.model.audio_projector.apply(model._init_weights)
    model.to(dtype)

    return model, finish_model(model, tokenizer, language_model.generation_config or GenerationConfig())


def lora_config_from_args(model_args: ModelConfig) -> LoraConfig:
    """TRL's LoRA settings, with the targets restricted to the language model: module names (`q_proj`, ...; the
    original's four by default) become a regular expression over `language_model` (BEATs has `q_proj`s too); a
    regular expression is used as given."""
    peft_config = get_peft_config(model_args)
    targets = model_args.lora_target_modules or LORA_TARGET_MODULES
    if isinstance(targets, str) and _REGEX_CHARACTERS.search(targets):
        peft_config.target_modules = targets
    else:
        peft_config.target_modules = language_model_targets(targets)
    peft_config.task_type = None  # attached through transformers' PEFT integration, not wrapped in a PeftModel
    return peft_config


def _set_lora_dropout(model: torch.nn.Module, dropout: float) -> None:
    for module in model.modules():
        if hasattr(module, "lora_dropout") and isinstance(module.lora_dropout, torch.nn.ModuleDict):
            for name in list(module.lora_dropout.keys()):
                module.lora_dropout[name] = torch.nn.Dropout(dropout) if dropout > 0 else torch.nn.Identity()


def configure_trainable_parameters(
    model: NatureLMForConditionalGeneration, model_args: ModelConfig, naturelm_args: NatureLMArguments
) -> dict[str, int]:
    """
    Attaches or checks the LoRA adapter and sets `requires_grad` per part, from the config:
    BEATs (`train_audio_encoder`), the Q-Former projector (`train_audio_projector`), the LoRA adapter (`use_peft`;
    an adapter already in the checkpoint is kept and trained, frozen when `use_peft` is off) and the Llama weights
    (`train_language_model`). Trainable half-precision parameters are upcast to float32 (the frozen ones keep the
    loading dtype). Returns the number of trainable parameters per part.
    """
    has_adapter = bool(getattr(model, "_hf_peft_config_loaded", False))
    if model_args.use_peft and has_adapter:
        loaded = next(iter(model.peft_config.values()))
        if (loaded.r, float(loaded.lora_alpha)) != (model_args.lora_r, float(model_args.lora_alpha)):
            raise ValueError(
                f"The checkpoint's LoRA adapter has r={loaded.r}, alpha={loaded.lora_alpha} but the config asks for "
                f"lora_r={model_args.lora_r}, lora_alpha={model_args.lora_alpha}; set them to the adapter's values "
                "to keep training it."
            )
        _set_lora_dropout(model, model_args.lora_dropout)
        loaded.lora_dropout = model_args.lora_dropout  # saved with the adapter, whose config is the one record
    elif model_args.use_peft:
        model.add_adapter(lora_config_from_args(model_args))
        has_adapter = True

    parts = {
        "audio_encoder": (naturelm_args.train_audio_encoder, lambda n: n.startswith("model.audio_tower.")),
        "audio_projector": (naturelm_args.train_audio_projector, lambda n: n.startswith("model.audio_projector.")),
        "lora": (model_args.use_peft, lambda n: ".lora_" in n),
    }
    counts = dict.fromkeys([*parts, "language_model"], 0)
    for name, param in model.named_parameters():
        part = next((p for p, (_, belongs) in parts.items() if belongs(name)), "language_model")
        train = parts[part][0] if part in parts else naturelm_args.train_language_model
        param.requires_grad_(train)
        if train:
            if param.dtype in (torch.float16, torch.bfloat16):
                param.data = param.data.float()
            counts[part] += param.numel()
    if not any(counts.values()):
        raise ValueError("Nothing to train: enable use_peft, train_audio_encoder, train_audio_projector or "
                         "train_language_model.")
    logger.info("Trainable parameters per part: %s", counts)
    return counts


__all__ = [
    "build_model_from_parts",
    "configure_trainable_parameters",
    "load_beats_checkpoint",
    "load_model_for_training",
    "lora_config_from_args",
    "zero3_init_disabled",
]
