"""Resolve `--model` for the command line: a converted folder, an original-layout checkpoint, a hub id, or the
tiny random smoke-test model; fail with a readable message when weights cannot be had."""

import json
from pathlib import Path

import torch

from .modeling_naturelm import NatureLMForConditionalGeneration
from .processing_naturelm import NatureLMProcessor

RELEASED_MODEL = "EarthSpeciesProject/NatureLM-audio"
RELEASED_BASE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


class WeightsUnavailableError(RuntimeError):
    """The requested weights are neither local nor downloadable here."""


def _how_to_get(model: str, reason: str) -> str:
    return (
        f"Cannot load the NatureLM-audio weights '{model}': {reason}\n"
        "The released weights are gated on the Hugging Face Hub. To use them:\n"
        f"  1. accept the licences of {RELEASED_MODEL} and {RELEASED_BASE_MODEL} on huggingface.co,\n"
        "  2. run `huggingface-cli login` (or set HF_TOKEN) on a machine with internet access,\n"
        "  3. rerun; or point --model at a local copy: a folder made by `naturelm convert ORIGINAL_DIR OUT "
        "--base-model LLAMA_DIR`, or an original checkpoint folder together with --base-model LLAMA_DIR.\n"
        "To see the whole pipeline run without any weights, add --smoke (a tiny random model; its answers are "
        "meaningless)."
    )


def load_model(
    model: str,
    base_model: str = RELEASED_BASE_MODEL,
    dtype: torch.dtype = torch.bfloat16,
    merging_alpha: float | None = None,
    smoke: bool = False,
) -> tuple[NatureLMForConditionalGeneration, NatureLMProcessor]:
    """Returns (model, processor) in eval mode."""
    if smoke:
        from .testing_utils import tiny_model_and_processor

        loaded = tiny_model_and_processor()
    else:
        loaded = _load_real(model, base_model, dtype)
    if merging_alpha is not None:
        loaded[0].set_merging_alpha(merging_alpha)
    return loaded[0].eval(), loaded[1]


def _load_real(model: str, base_model: str, dtype: torch.dtype):
    from .convert import from_original

    try:
        folder = _resolve(model)
        config = json.loads((folder / "config.json").read_text())
        if "beats_cfg" in config:  # an original-layout checkpoint, e.g. the published hub repo
            return from_original(folder, _resolve(base_model), dtype=dtype)
        loaded = NatureLMForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        return loaded, NatureLMProcessor.from_pretrained(folder)
    except WeightsUnavailableError:
        raise
    except (OSError, ValueError) as error:
        raise WeightsUnavailableError(_how_to_get(model, str(error).splitlines()[0])) from error


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
