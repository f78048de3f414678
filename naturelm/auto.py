"""Registers the NatureLM classes with transformers: the Auto classes resolve NatureLM folders to this code and
`pipeline("naturelm-audio-text-to-text", ...)` finds the pipeline, without `trust_remote_code`. Imported on the
first use of a class from `naturelm` (see `naturelm/__init__.py`), not by the `naturelm` command's start."""

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

AutoConfig.register(NatureLMConfig.model_type, NatureLMConfig)
AutoConfig.register(NatureLMBeatsConfig.model_type, NatureLMBeatsConfig)
AutoModel.register(NatureLMConfig, NatureLMForConditionalGeneration)
AutoFeatureExtractor.register(NatureLMConfig, NatureLMFeatureExtractor)
AutoProcessor.register(NatureLMConfig, NatureLMProcessor)
PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=NatureLMPipeline, pt_model=AutoModel)
