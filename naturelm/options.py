"""What the `naturelm` command needs before it loads anything heavy (torch, transformers): defaults, choices, and the
errors it reports without a traceback. The modules that use them import them from here."""

import argparse

RELEASED_MODEL = "EarthSpeciesProject/NatureLM-audio"
RELEASED_BASE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# `--dtype` names and the torch dtype each means (`naturelm.convert.DTYPES` holds the torch objects).
DTYPE_NAMES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
FORMATS = ("jsonl", "csv", "raven", "parquet")
# bitsandbytes formats (quantized while the checkpoint is read), then PyTorch's CPU int8 (converted after loading)
BITSANDBYTES = ("nf4", "int8")
FBGEMM_INT8 = "fbgemm-int8"
QUANTIZATIONS = (*BITSANDBYTES, FBGEMM_INT8)


class WeightsUnavailableError(RuntimeError):
    """The requested weights are neither local nor downloadable here."""


class ModelFilesError(RuntimeError):
    """The model's files are here but cannot be used as they are: a weights file truncated, corrupt or holding more
    than tensors, an adapter file without its config (or the reverse), or weights that do not fit the model the
    config describes. The message names the file and what to do; no login can fix it (exit code 3)."""


class RayUnavailableError(ImportError):
    """`--ray` was asked for but Ray is not installed."""


def add_quantize_argument(parser: argparse.ArgumentParser) -> None:
    """`--quantize` for every command that loads the model for inference."""
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default=None,
                        help="quantized language model weights (opt-in; docs/quantization.md): nf4 (4-bit, ~6 GB at "
                             "8B, for small GPUs) or int8 (~10 GB), bitsandbytes, quantized while the checkpoint is "
                             "read, from a converted folder; fbgemm-int8 (CPU only, fastest there, converts after a "
                             "bf16 load)")


__all__ = [
    "BITSANDBYTES",
    "FBGEMM_INT8",
    "DTYPE_NAMES",
    "FORMATS",
    "QUANTIZATIONS",
    "RELEASED_BASE_MODEL",
    "RELEASED_MODEL",
    "ModelFilesError",
    "RayUnavailableError",
    "WeightsUnavailableError",
    "add_quantize_argument",
]
