"""Quantized language-model weights (`--quantize`), three ways, each winning somewhere (docs/quantization.md):

- `nf4` and `int8`: bitsandbytes through transformers' `quantization_config`: the Linears of the language model are
  quantized while `from_pretrained` reads the checkpoint (the bf16 model never sits in memory whole), BEATs, the
  Q-Former, the projector and `lm_head` keep their dtype (`NatureLMForConditionalGeneration._keep_in_fp32_modules`),
  and the LoRA adapter stays a LoRA on the quantized base (QLoRA's layout: no second rounding of a merged weight, and
  the merging alpha can still be set). For GPUs: the 8B model in ~6 GB (nf4) or ~10 GB (int8).
- `fbgemm-int8`: PyTorch's own dynamic-quantized Linear on CPU, below. Measured much faster on CPU than either
  bitsandbytes format, so it stays for CPU runs.

fbgemm-int8: `torch.ao.nn.quantized.dynamic.Linear` (the fbgemm / x86 kernels) keeps each weight as int8 with one
scale per output channel and quantizes the activations on the fly, so the 8B language model drops from 16 GB of bf16
to about 8 GB and its products run on the CPU's int8 instructions (VNNI, or AVX2's `vpmaddubsw`). Measured here, that
beat every torchao 0.18 int8 path on CPU without `torch.compile` (see the README). It converts an already loaded
model, so the bf16 weights are read first.

The kernel takes one activation scale per call (per batch), not per token: an outlier feature in one window's
hidden state coarsens the others' quantization, so a window's answer can depend slightly on its batch, and quality
on the released weights is unmeasured. Hence opt-in, never the default.
"""

import importlib.util

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from .options import BITSANDBYTES, FBGEMM_INT8, QUANTIZATIONS


def bitsandbytes_config(method: str, dtype: torch.dtype):
    """The `BitsAndBytesConfig` of `--quantize nf4 / int8` (None for the fbgemm path), with a readable error when
    bitsandbytes is missing. nf4 takes double quantization (the block scales in 8 bits: ~0.4 GB less at 8B) and
    computes in `dtype`."""
    if method not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {method!r}; choose one of {', '.join(QUANTIZATIONS)}.")
    if method not in BITSANDBYTES:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"--quantize {method} needs bitsandbytes: pip install 'naturelm[quant]'.")
    from transformers import BitsAndBytesConfig

    if method == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


class Int8Linear(nn.Module):
    """An `nn.Linear` replaced by PyTorch's dynamic int8 Linear. The kernel reads and writes fp32, so the activation is
    cast around it: the rest of the model keeps its dtype (bf16), and the casts cost a few elementwise passes over
    `(tokens, hidden)`, nothing beside the product."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny).double()
        qweight = torch.quantize_per_channel(weight, scales, torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8)
        self.quantized = DynamicQuantizedLinear(linear.in_features, linear.out_features, bias_=linear.bias is not None,
                                                dtype=torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.quantized.set_weight_bias(qweight, bias)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.quantized(hidden_states.float()).to(hidden_states.dtype)


def quantize_language_model(model, method: str = FBGEMM_INT8) -> int:
    """Replaces every Linear of the language model and the `lm_head` by `Int8Linear`, one at a time (each bf16 weight
    is freed as soon as its int8 copy exists, so memory only falls), and returns how many were replaced. The audio
    encoder and projector are left as they are: they are small (~95M parameters) and compute-bound on short inputs.
    Merge the LoRA adapter first (`naturelm.loading.load` does): the adapter's own Linears would otherwise be quantized
    as separate products."""
    if method != FBGEMM_INT8:
        raise ValueError(f"Unknown quantization {method!r} for a loaded model; choose {FBGEMM_INT8} (the "
                         f"bitsandbytes formats {', '.join(BITSANDBYTES)} are applied by the loader).")
    if model.device.type != "cpu":
        raise ValueError(f"--quantize {method} runs PyTorch's CPU int8 kernels; the model is on {model.device}.")
    if model._lora_layers():
        raise ValueError("Merge the LoRA adapter (model.merge_adapter_into_weights()) before quantizing.")
    targets = [(parent, name) for parent in model.model.language_model.modules()
               for name, child in parent.named_children() if type(child) is nn.Linear]
    targets.append((model, "lm_head"))
    for parent, name in targets:
        setattr(parent, name, Int8Linear(getattr(parent, name)))
    return len(targets)
