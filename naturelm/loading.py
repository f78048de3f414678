"""The one loader (`load`): a converted folder, an original-layout checkpoint, a hub id, or the tiny random
smoke-test model, checked, converted and placed the same way for every tool; a readable error when weights cannot
be had or are broken."""

import contextlib
import json
import logging
import os
import pickle
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers.modeling_utils import load_state_dict

from modeling_naturelm import NatureLMCheckpointError, NatureLMForConditionalGeneration
from processing_naturelm import NatureLMProcessor

from . import auto  # noqa: F401  (NatureLM folders resolve to this code, e.g. the processor's feature extractor)
from .options import RELEASED_BASE_MODEL, RELEASED_MODEL, ModelFilesError, WeightsUnavailableError


# The weights files `from_pretrained` reads from a folder (base model, shards, LoRA adapter) and the original layout's.
_WEIGHT_PATTERNS = ("model*.safetensors", "pytorch_model*.bin", "adapter_model.safetensors", "adapter_model.bin",
                    "model.pt", "model.pth")


def check_model_files(folder: Path) -> None:
    """Refuses, with a `ModelFilesError` naming the file, a model folder whose weights files cannot all be read: each
    is opened by the reader `from_pretrained` uses (transformers' `load_state_dict`, onto the meta device: headers
    only), which would otherwise stop with a traceback that names no file; and a LoRA adapter config without its
    weights, or weights without their config, which transformers would report as a download error or skip."""
    for path in sorted({path for pattern in _WEIGHT_PATTERNS for path in folder.glob(pattern)}):
        try:
            load_state_dict(path, map_location="meta")
        except pickle.UnpicklingError:
            raise ModelFilesError(
                f"{path} holds Python objects besides tensors (it was saved with torch.save of more than a state "
                "dict), which loading refuses for safety; save the model with save_pretrained (safetensors) or "
                "convert it again."
            ) from None
        except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ModelFilesError(
                f"{path} is truncated or corrupt ({reason}); download or convert the model again."
            ) from None
    adapter_config = folder / "adapter_config.json"
    adapter_weights = [folder / name for name in ("adapter_model.safetensors", "adapter_model.bin")]
    if adapter_config.is_file() and not any(path.is_file() for path in adapter_weights):
        raise ModelFilesError(
            f"{adapter_config} declares a LoRA adapter but its weights ({adapter_weights[0].name}) are missing; copy "
            "the whole model folder again, or convert it again."
        )
    if not adapter_config.is_file() and any(path.is_file() for path in adapter_weights):
        found = next(path for path in adapter_weights if path.is_file())
        raise ModelFilesError(
            f"{found} has no {adapter_config.name} beside it, so the LoRA adapter would be left out; copy the whole "
            "model folder again, or convert it again."
        )


def _how_to_get(model: str, reason: str) -> str:
    """The reason, then how to get weights: for a hub id, access to the gated repos (a login); for a local path,
    which folders `--model` takes (no login can help there)."""
    local_copy = ("a folder made by `naturelm convert ORIGINAL_DIR OUT --base-model LLAMA_DIR`, or an original "
                  "checkpoint folder together with --base-model LLAMA_DIR.\n")
    if model.startswith((".", "/")) or Path(model).exists():
        how = f"Point --model at {local_copy}"
    else:
        how = (
            "The released weights are gated on the Hugging Face Hub. To use them:\n"
            f"  1. accept the licences of {RELEASED_MODEL} and {RELEASED_BASE_MODEL} on huggingface.co,\n"
            "  2. run `hf auth login` (or set HF_TOKEN) on a machine with internet access,\n"
            f"  3. rerun; or point --model at a local copy: {local_copy}"
        )
    return (
        f"Cannot load the NatureLM-audio weights '{model}': {reason}\n{how}"
        "To see the whole pipeline run without any weights, add --smoke (a tiny random model; its answers are "
        "meaningless)."
    )


def audio_encoder_to_fp32_without_native_bf16(model: NatureLMForConditionalGeneration) -> bool:
    """The placement rule. On a CPU without native bf16 (AVX512-BF16 or AMX), bf16 matrix products are emulated: 7x
    slower than fp32 on a 2-core AVX2 machine. There the audio encoder and projector (compute-bound, ~95M parameters,
    0.4 GB in fp32) run in fp32 while the memory-bound LLM stays in bf16. Returns whether the model was changed."""
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if model.device.type != "cpu" or model.model.audio_tower.dtype != torch.bfloat16 or native_bf16:
        return False
    model.model.audio_tower.float()
    model.model.audio_projector.float()
    return True


def load(
    model: str | os.PathLike = RELEASED_MODEL,
    *,
    base_model: str | os.PathLike = RELEASED_BASE_MODEL,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    merging_alpha: float | None = None,
    merge_adapter: bool = True,
    quantize: str | None = None,
    training: bool = False,
    smoke: bool = False,
) -> tuple[NatureLMForConditionalGeneration, NatureLMProcessor]:
    """
    The one loader: the CLI, the Python API, the Space, evaluation, Ray actors, the benchmarks and training all get
    their `(model, processor)` here, so a model is found, checked, converted and placed the same way everywhere.

    Args:
        model: a converted folder (convert, training or `save_pretrained` output), an original-layout checkpoint
            folder (converted on the fly, with `base_model`), or a hub id of either.
        base_model: the base Llama an original-layout checkpoint needs (config, tokenizer, frozen weights).
        dtype: the weights' dtype.
        device: where the model runs (bitsandbytes weights are read straight onto it).
        merging_alpha: the LoRA scale factor (default: the checkpoint's).
        merge_adapter: fold the LoRA adapter into the base weights for inference: one matmul per projection instead
            of three (5% faster decoding at tiny size). The Space keeps it unmerged: its slider sets the scale per call.
        quantize: one of `naturelm.options.QUANTIZATIONS`. `nf4` / `int8` quantize the language model with
            bitsandbytes while the checkpoint is read (the bf16 model never sits in memory whole) and keep the adapter
            a LoRA on the quantized base; `fbgemm-int8` converts the loaded, merged model to PyTorch's CPU int8.
        training: load as training starts from it: adapter unmerged, dtypes as given, not moved (the trainer places
            it); of the quantizations only the bitsandbytes formats (QLoRA).
        smoke: the tiny random model (fp32) instead of any weights (a pipeline check; its answers are meaningless).

    Returns the model (in eval mode unless `training`) and its processor. For inference on CPU the placement rule
    applies (`audio_encoder_to_fp32_without_native_bf16`).
    """
    from .quantization import BITSANDBYTES, bitsandbytes_config, quantize_language_model

    quantization = None if quantize is None else bitsandbytes_config(quantize, dtype)
    if training and quantize is not None and quantization is None:
        raise ValueError(f"--quantize {quantize} converts a model for inference; training takes nf4 or int8 (QLoRA).")
    if smoke:
        from .testing_utils import tiny_model_and_processor

        loaded, processor = tiny_model_and_processor()
        if quantization is not None:  # through a saved folder, as a real checkpoint is quantized
            with tempfile.TemporaryDirectory() as folder:
                loaded.save_pretrained(folder)
                loaded = _from_folder(Path(folder), dtype, quantization, device)
    else:
        loaded, processor = _load_weights(str(model), str(base_model), dtype, quantization, device)
    if merging_alpha is not None:
        loaded.set_merging_alpha(merging_alpha)
    if training:
        return loaded, processor
    if quantize not in BITSANDBYTES:  # bitsandbytes weights were read onto `device` and refuse to move
        loaded = loaded.to(device)
        if merge_adapter and loaded._lora_layers():
            loaded.merge_adapter_into_weights()
    audio_encoder_to_fp32_without_native_bf16(loaded)
    if quantize is not None and quantization is None:
        quantize_language_model(loaded, quantize)
    return loaded.eval(), processor


@contextlib.contextmanager
def _without_loading_report():
    """transformers logs a table of the weights it found missing, unexpected or mis-shaped; NatureLM then refuses the
    weights with an error naming them, so here the table would only bury that one line. Its warnings are filtered
    out while loading (the loggers' levels stay: transformers reads them to decide on other checks)."""
    loggers = [logging.getLogger(name) for name in ("transformers.modeling_utils", "transformers.integrations.peft")]

    def errors_only(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    for logger in loggers:
        logger.addFilter(errors_only)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(errors_only)


def _from_folder(folder: Path, dtype: torch.dtype, quantization, device) -> NatureLMForConditionalGeneration:
    with _without_loading_report():
        if quantization is None:
            return NatureLMForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        return NatureLMForConditionalGeneration.from_pretrained(
            folder, dtype=dtype, quantization_config=quantization, device_map={"": torch.device(device)}
        )


def _load_weights(model: str, base_model: str, dtype: torch.dtype, quantization, device):
    from .convert import ConversionError, from_original

    try:
        folder = _resolve(model)
        check_model_files(folder)
        original = "beats_cfg" in json.loads((folder / "config.json").read_text())
        if original and quantization is None:  # an original-layout checkpoint, e.g. the published hub repo
            base = _resolve(base_model)
            check_model_files(base)
            return from_original(folder, base, dtype=dtype)
        if not original:
            return _from_folder(folder, dtype, quantization, device), NatureLMProcessor.from_pretrained(folder)
    except (WeightsUnavailableError, ModelFilesError):
        raise
    except (NatureLMCheckpointError, ConversionError) as error:
        raise ModelFilesError(str(error)) from None
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0]
        if Path(model).is_dir():  # a local folder: its files are the cause, not a login
            raise ModelFilesError(f"Cannot load the model in {model}: {reason}") from None
        raise WeightsUnavailableError(_how_to_get(model, reason)) from error
    raise ValueError(
        f"{model} is an original-layout checkpoint; 4/8-bit weights are quantized as a converted folder is read, so "
        f"convert it once first (`naturelm convert {model} OUT --base-model {base_model}`) and pass --model OUT."
    )


def _resolve(path_or_id: str) -> Path:
    path = Path(path_or_id)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise WeightsUnavailableError(_how_to_get(path_or_id, f"{path} has no config.json."))
        return path
    if path.exists() or path_or_id.startswith((".", "/")):
        raise WeightsUnavailableError(_how_to_get(path_or_id, f"{path} is not a model folder."))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(path_or_id))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise WeightsUnavailableError(_how_to_get(path_or_id, f"download failed ({type(error).__name__}).")) from error
