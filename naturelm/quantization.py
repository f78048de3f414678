"""8-bit weights for the language model on CPU (`--quantize int8`).

PyTorch's own dynamic-quantized Linear (`torch.ao.nn.quantized.dynamic.Linear`, the fbgemm / x86 kernels) keeps each
weight as int8 with one scale per output channel and quantizes the activations on the fly, so the 8B language model
drops from 16 GB of bf16 to about 8 GB and its products run on the CPU's int8 instructions (VNNI, or AVX2's
`vpmaddubsw`). Measured here, that beat every torchao 0.18 int8 path on CPU without `torch.compile` (see the README).

The kernel takes one activation scale per call (per batch), not per token: an outlier feature in one window's
hidden state coarsens the others' quantization, so a window's answer can depend slightly on its batch, and quality
on the released weights is unmeasured. Hence opt-in, never the default.
"""

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from .loading import return_freed_memory
from .options import QUANTIZATIONS



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


def quantize_language_model(model, method: str = "int8") -> int:
    """Replaces every Linear of the language model and the `lm_head` by `Int8Linear`, one at a time (each bf16 weight
    is freed as soon as its int8 copy exists, so memory only falls), and returns how many were replaced. The audio
    encoder and projector are left as they are: they are small (~95M parameters) and compute-bound on short inputs.
    Merge the LoRA adapter first (`load_for_inference` does): the adapter's own Linears would otherwise be quantized
    as separate products."""
    if method not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {method!r}; choose one of {', '.join(QUANTIZATIONS)}.")
    if model.device.type != "cpu":
        raise ValueError(f"--quantize {method} runs PyTorch's CPU int8 kernels; the model is on {model.device}.")
    if model._lora_layers():
        raise ValueError("Merge the LoRA adapter (model.merge_adapter_into_weights()) before quantizing.")
    targets = [(parent, name) for parent in model.model.language_model.modules()
               for name, child in parent.named_children() if type(child) is nn.Linear]
    targets.append((model, "lm_head"))
    for parent, name in targets:
        setattr(parent, name, Int8Linear(getattr(parent, name)))
        return_freed_memory()  # the bf16 weight and the fp32 temporaries, before the next weight is converted
    return len(targets)

