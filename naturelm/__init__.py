"""NatureLM-audio, Hugging Face-native.

`import naturelm` is cheap, so that the `naturelm` command starts fast: the model classes (and torch) load on first
use, `from naturelm import NatureLMForConditionalGeneration` or `naturelm.NatureLMPipeline`, which also registers them
with transformers' Auto classes and pipeline registry (`naturelm.auto`). Saved models carry their code files and
`auto_map` in any case (the remote-code files register themselves for `save_pretrained`)."""

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
