"""NatureLM-audio, Hugging Face-native."""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from configuration_naturelm import NatureLMBeatsConfig, NatureLMConfig
from feature_extraction_naturelm import NatureLMFeatureExtractor
from modeling_naturelm import (
    NatureLMBeatsModel,
    NatureLMForConditionalGeneration,
    NatureLMModel,
    NatureLMPreTrainedModel,
)
from pipeline_naturelm import TASK, NatureLMPipeline
from processing_naturelm import NatureLMProcessor

# With the package imported, the Auto classes resolve NatureLM folders to this code (no trust_remote_code needed).
AutoConfig.register(NatureLMConfig.model_type, NatureLMConfig)
AutoConfig.register(NatureLMBeatsConfig.model_type, NatureLMBeatsConfig)
AutoModel.register(NatureLMConfig, NatureLMForConditionalGeneration)
AutoFeatureExtractor.register(NatureLMConfig, NatureLMFeatureExtractor)
AutoProcessor.register(NatureLMConfig, NatureLMProcessor)
PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=NatureLMPipeline, pt_model=AutoModel)

# `save_pretrained` then writes the code files and an `auto_map`, so a saved folder loads with the Auto classes and
# `trust_remote_code=True` where this package is not installed.
NatureLMConfig.register_for_auto_class()
NatureLMForConditionalGeneration.register_for_auto_class("AutoModel")
NatureLMFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
NatureLMProcessor.register_for_auto_class("AutoProcessor")

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
