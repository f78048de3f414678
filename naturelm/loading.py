"""Resolve `--model` for the command line: a converted folder, an original-layout checkpoint, a hub id, or the
tiny random smoke-test model; fail with a readable message when weights cannot be had."""

import contextlib
import ctypes
import functools
import json
import logging
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


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc, for the allocator calls below; None elsewhere (macOS, musl), where there is nothing to tune."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory_mapped() -> bool:
    """Makes glibc's malloc reuse freed memory instead of returning it to the system; returns whether it applied.

    PyTorch has no caching allocator on CPU, so each large temporary (the `(batch, heads, 496, 496)` attention bias
    of every BEATs layer, the FFT frames, the logits of every decoding step) is a fresh `mmap` whose pages fault in
    on first touch; on a 2-core machine that measured a quarter of the tiny model's inference time. Serving large
    blocks from the heap and never trimming it keeps those pages mapped, at the cost of holding the peak memory.
    Process-wide, so it is called by the command-line tools, not on import.
    """
    libc = _glibc()
    if libc is None:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def return_freed_memory() -> None:
    """Hands the heap's free pages back to the system now (glibc's `malloc_trim`; elsewhere nothing to do).

    Under `keep_freed_memory_mapped` nothing is ever returned, and a conversion that frees one large weight while
    allocating a differently sized one (bf16 -> fp32 temporaries -> int8) leaves holes the next weight cannot use:
    quantizing the 8B model that way grew past 24 GB. Trimming after each weight keeps the peak where it started."""
    if _glibc() is not None:
        _glibc().malloc_trim(0)


def audio_encoder_to_fp32_without_native_bf16(model: NatureLMForConditionalGeneration) -> bool:
    """On a CPU without native bf16 (AVX512-BF16 or AMX), bf16 matrix products are emulated: 7x slower than fp32 on
    a 2-core AVX2 machine. There the audio encoder and projector (compute-bound, ~95M parameters, 0.4 GB in fp32)
    run in fp32 while the memory-bound LLM stays in bf16. Returns whether the model was changed."""
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    if model.device.type != "cpu" or model.model.audio_tower.dtype != torch.bfloat16 or native_bf16:
        return False
    model.model.audio_tower.float()
    model.model.audio_projector.float()
    return True


def load_model(
    model: str,
    base_model: str = RELEASED_BASE_MODEL,
    dtype: torch.dtype = torch.bfloat16,
    merging_alpha: float | None = None,
    smoke: bool = False,
    merge_adapter: bool = False,
    quantize: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[NatureLMForConditionalGeneration, NatureLMProcessor]:
    """Returns (model, processor) in eval mode. `merge_adapter` folds the LoRA adapter (at the merging alpha) into
    the base weights, for inference: one matmul per projection instead of three (5% faster decoding at tiny size).
    `quantize="nf4"/"int8"` loads the language model quantized by bitsandbytes onto `device` while the checkpoint is
    read (`naturelm.quantization`); the adapter then stays unmerged, a LoRA on the quantized base. Other values of
    `quantize` and `device` are left to the caller (`load_for_inference`)."""
    from .quantization import bitsandbytes_config

    quantization = None if quantize is None else bitsandbytes_config(quantize, dtype)
    if smoke:
        from .testing_utils import tiny_model_and_processor

        loaded = tiny_model_and_processor()
        if quantization is not None:  # through a saved folder, as a real checkpoint is quantized
            with tempfile.TemporaryDirectory() as folder:
                loaded[0].save_pretrained(folder)
                loaded = _from_folder(Path(folder), dtype, quantization, device), loaded[1]
    else:
        loaded = _load_real(model, base_model, dtype, quantization, device)
    if merging_alpha is not None:
        loaded[0].set_merging_alpha(merging_alpha)
    if merge_adapter and quantization is None and loaded[0]._lora_layers():
        loaded[0].merge_adapter_into_weights()
    return loaded[0].eval(), loaded[1]


def load_for_inference(
    model: str,
    base_model: str = RELEASED_BASE_MODEL,
    dtype: torch.dtype = torch.bfloat16,
    merging_alpha: float | None = None,
    smoke: bool = False,
    device: str | torch.device = "cpu",
    quantize: str | None = None,
) -> tuple[NatureLMForConditionalGeneration, NatureLMProcessor]:
    """`load_model` set up as the command-line tools run inference: the LoRA adapter merged, the model on `device`,
    and on CPU freed memory kept mapped and the audio encoder in fp32 where bf16 is not native. `quantize` is one of
    `naturelm.quantization.QUANTIZATIONS`: nf4/int8 are applied while loading, `fbgemm-int8` replaces the loaded
    language model's Linears by PyTorch's CPU int8 ones."""
    from .quantization import BITSANDBYTES, quantize_language_model

    if torch.device(device).type == "cpu":
        keep_freed_memory_mapped()
    loaded, processor = load_model(model, base_model, dtype, merging_alpha, smoke, merge_adapter=True,
                                   quantize=quantize, device=device)
    if quantize not in BITSANDBYTES:  # bitsandbytes models were loaded onto `device`
        loaded = loaded.to(device)
    audio_encoder_to_fp32_without_native_bf16(loaded)
    if quantize is not None and quantize not in BITSANDBYTES:
        quantize_language_model(loaded, quantize)
    return loaded, processor


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


def _load_real(model: str, base_model: str, dtype: torch.dtype, quantization=None, device="cpu"):
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
