"""NatureLM-audio, Hugging Face-native.

`import naturelm` is cheap, so that the `naturelm` command starts fast: the model classes (and torch) load on first
use, `from naturelm import NatureLMForConditionalGeneration` or `naturelm.NatureLMPipeline`, which also registers them
with transformers' Auto classes and pipeline registry (`naturelm.auto`). Saved models carry their code files and
`auto_map` in any case (the remote-code files register themselves for `save_pretrained`)."""

import logging

# bitsandbytes warns on import, on CPUs with AVX512-BF16, that its optional fused 4-bit kernel (fetched from the Hub by
# the `kernels` package) is missing, although it then runs its own: every command printed that line, quantizing or not.
# Real errors still show. docs/quantization.md says what nf4 on CPU uses.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__all__ = [
    "NatureLMBeatsConfig",
    "NatureLMBeatsModel",
    "NatureLMConfig",
    "NatureLMFeatureExtractor",
    "NatureLMForConditionalGeneration",
    "NatureLMModel",
    "NatureLMPipeline",
    "NatureLMPreTrainedModel",
    "NatureLMProcessor",
]


def __getattr__(name: str):
    if name in __all__:
        from . import auto

        return getattr(auto, name)
    raise AttributeError(f"module 'naturelm' has no attribute {name!r}")
