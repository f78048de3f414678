# Copyright 2026 The NatureLM-audio HF authors. Licensed under the MIT License.
"""Configuration classes for NatureLM-audio (BEATs encoder + window Q-Former + Llama 3.1 with LoRA)."""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


class NatureLMBeatsConfig(PreTrainedConfig):
    r"""
    Configuration of the BEATs audio encoder. Field names are those of the original `beats_cfg`, so a
    NatureLM `config.json` can be read without translation.

    Args:
        input_patch_size (`int`, defaults to 16): side of the square fbank patches.
        embed_dim (`int`, defaults to 512): patch embedding width.
        conv_bias (`bool`, defaults to `False`): bias in the patch embedding convolution.
        encoder_layers (`int`, defaults to 12): number of transformer layers.
        encoder_embed_dim (`int`, defaults to 768): transformer width.
        encoder_ffn_embed_dim (`int`, defaults to 3072): feed-forward width.
        encoder_attention_heads (`int`, defaults to 12): attention heads.
        activation_fn (`str`, defaults to `"gelu"`): feed-forward activation.
        layer_wise_gradient_decay_ratio (`float`, defaults to 0.6): gradient multiplier applied before each layer
            (forward is the identity).
        layer_norm_first (`bool`, defaults to `False`): pre-LN instead of post-LN layers.
        deep_norm (`bool`, defaults to `True`): scale residuals by `(2 * encoder_layers) ** 0.25` (DeepNet).
        dropout, attention_dropout, activation_dropout, encoder_layerdrop, dropout_input (`float`): dropouts.
        conv_pos (`int`, defaults to 128): kernel of the convolutional positional embedding.
        conv_pos_groups (`int`, defaults to 16): groups of that convolution.
        relative_position_embedding (`bool`, defaults to `True`): bucketed relative position bias.
        num_buckets (`int`, defaults to 320), max_distance (`int`, defaults to 800): its buckets.
        gru_rel_pos (`bool`, defaults to `True`): gate the relative position bias by the query.
        finetuned_model (`bool`), predictor_dropout (`float`), predictor_class (`int`): the AudioSet classifier
            head of the original checkpoint; NatureLM does not use it, so no module is built for it.

    Example:

    ```python
    >>> from naturelm import NatureLMBeatsConfig, NatureLMBeatsModel
    >>> model = NatureLMBeatsModel(NatureLMBeatsConfig(encoder_layers=2))
    ```"""

    model_type = "naturelm_beats"
    attribute_map = {
        "hidden_size": "encoder_embed_dim",
        "num_hidden_layers": "encoder_layers",
        "num_attention_heads": "encoder_attention_heads",
        "intermediate_size": "encoder_ffn_embed_dim",
    }

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 0.6
    layer_norm_first: bool = False
    deep_norm: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True
    finetuned_model: bool = True
    predictor_dropout: float = 0.0
    predictor_class: int = 527
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.deep_norm and self.layer_norm_first:
            raise ValueError("BEATs supports `deep_norm` only with post-LN layers (`layer_norm_first=False`).")
        if self.encoder_embed_dim % self.encoder_attention_heads != 0:
            raise ValueError(
                f"encoder_embed_dim ({self.encoder_embed_dim}) must be divisible by "
                f"encoder_attention_heads ({self.encoder_attention_heads})."
            )
        super().__post_init__(**kwargs)


class NatureLMConfig(PreTrainedConfig):
    r"""
    Configuration of [`NatureLMForConditionalGeneration`]. Defaults are the released NatureLM-audio model:
    BEATs 12x768, a 2-layer Q-Former at 768 reading every 0.333 s window (17 BEATs tokens) into one query,
    Llama-3.1-8B-Instruct (with the added `[PAD]` row, 128257 tokens). The LoRA adapter (r=32, alpha=32 on q/k/v/o in
    the released model) is not described here: its rank, alpha, dropout and targets are the peft adapter's own config
    (`adapter_config.json`, `model.peft_config`), their one source; `merging_alpha` scales it on top.

    Args:
        audio_config (`dict` or [`NatureLMBeatsConfig`]): the BEATs encoder.
        qformer_config (`dict` or `Blip2QFormerConfig`): the window Q-Former; `encoder_hidden_size` must equal the
            BEATs width.
        text_config (`dict` or `LlamaConfig`): the language model.
        window_seconds (`float`, defaults to 0.333333): Q-Former window length (`second_per_window`).
        window_stride_seconds (`float`, defaults to 0.333333): Q-Former window hop (`second_stride`).
        num_query_tokens (`int`, defaults to 1): learned queries (and LLM tokens) per window.
        audio_token_id (`int`, defaults to 128002): placeholder id replaced by audio features.
        merging_alpha (`float`, defaults to 1.0): runtime LoRA scale factor, W0 + merging_alpha * (alpha/r) * BA
            with r and alpha from the adapter config (the original `model_merging_scaling`).

    Example:

    ```python
    >>> from naturelm import NatureLMConfig, NatureLMForConditionalGeneration
    >>> config = NatureLMConfig()  # the released sizes
    ```"""

    model_type = "naturelm"
    sub_configs_defaults = {
        "audio_config": NatureLMBeatsConfig,
        "qformer_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="blip_2_qformer",
            init_kwargs={
                "hidden_size": 768,
                "num_attention_heads": 12,
                "intermediate_size": 3072,
                "num_hidden_layers": 2,
                "layer_norm_eps": 1e-12,
                "hidden_act": "gelu",
                "cross_attention_frequency": 1,
                "encoder_hidden_size": 768,
            },
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="llama",
            init_kwargs={
                "vocab_size": 128257,
                "hidden_size": 4096,
                "intermediate_size": 14336,
                "num_hidden_layers": 32,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "max_position_embeddings": 131072,
                "rms_norm_eps": 1e-5,
                "bos_token_id": 128000,
                "eos_token_id": [128001, 128008, 128009],
                "pad_token_id": 128256,
                "rope_parameters": {
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                },
            },
        ),
    }

    audio_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    window_seconds: float = 0.333333
    window_stride_seconds: float = 0.333333
    num_query_tokens: int = 1
    audio_token_id: int = 128002
    merging_alpha: float = 1.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        # A partial dict only overrides the released sizes instead of falling back to the library defaults
        # (Blip-2's 12 layers with cross-attention every 2nd layer would silently change the architecture).
        for key in ("qformer_config", "text_config"):
            value = getattr(self, key)
            if isinstance(value, dict):
                setattr(self, key, {**self.sub_configs_defaults[key].init_kwargs, **value})
        super().__post_init__(**kwargs)
        if self.qformer_config.encoder_hidden_size != self.audio_config.encoder_embed_dim:
            raise ValueError(
                f"qformer_config.encoder_hidden_size ({self.qformer_config.encoder_hidden_size}) must equal the "
                f"BEATs width audio_config.encoder_embed_dim ({self.audio_config.encoder_embed_dim})."
            )
        if self.window_tokens < 1 or self.window_stride_tokens < 1:
            raise ValueError(
                f"window_seconds ({self.window_seconds}) and window_stride_seconds ({self.window_stride_seconds}) "
                "must each cover at least one BEATs token (0.02 s)."
            )

    @property
    def window_tokens(self) -> int:
        """BEATs tokens per Q-Former window. The original assumes 1500 BEATs tokens per 30 s."""
        return round(1500 * self.window_seconds / 30.0)

    @property
    def window_stride_tokens(self) -> int:
        """BEATs tokens between the starts of consecutive Q-Former windows."""
        return round(1500 * self.window_stride_seconds / 30.0)


# Saved with its code file and an `auto_map`, so a saved folder loads with the Auto classes and `trust_remote_code`
# wherever it goes (transformers registers remote classes so when it loads them; this covers the installed modules).
NatureLMConfig.register_for_auto_class()

__all__ = ["NatureLMBeatsConfig", "NatureLMConfig"]
