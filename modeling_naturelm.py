# Copyright 2026 The NatureLM-audio HF authors. Licensed under the MIT License.
"""PyTorch NatureLM-audio: BEATs audio encoder, window-level Q-Former projector and a Llama language model.

This file travels with checkpoints as remote code, so it imports only torch, transformers and its sibling files.
"""

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModel, Blip2QFormerModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPast,
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.wavlm.modeling_wavlm import WavLMAttention
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple
from transformers.utils.loading_report import update_key_name

try:  # as remote code these files form one package; pip-installed they are top-level modules
    from .configuration_naturelm import NatureLMBeatsConfig, NatureLMConfig
except ImportError:
    from configuration_naturelm import NatureLMBeatsConfig, NatureLMConfig

# transformers 5.24 renamed the KV cache of model inputs and outputs from `past_key_values` to `cache`. The cache is
# passed through `**kwargs` and the outputs subclass transformers' own, so both spellings work; callers that hand a
# cache back in by name use this one.
CACHE_KWARG = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

# The pipeline every saved folder declares (`custom_pipelines` in config.json) and carries (its code file and the
# sibling files it imports), so `pipeline(PIPELINE_TASK, model=folder, trust_remote_code=True)` loads it anywhere.
PIPELINE_TASK = "naturelm-audio-text-to-text"
PIPELINE_CLASS = "pipeline_naturelm.NatureLMPipeline"


def save_pipeline_code(config, save_directory: str | os.PathLike | None = None) -> None:
    """Declares the pipeline in `config` and, given a folder, copies its code file and the files it imports there
    (found by transformers' own `get_relative_import_files`, as `custom_object_save` finds them). Named here by
    file, not imported: the pipeline imports this module."""
    config.custom_pipelines = {PIPELINE_TASK: {"impl": PIPELINE_CLASS, "pt": ["AutoModel"]}}
    if save_directory is not None:
        source = Path(__file__).with_name(f"{PIPELINE_CLASS.split('.')[0]}.py")
        for path in [source, *map(Path, get_relative_import_files(source))]:
            if Path(save_directory, path.name).resolve() != path.resolve():
                shutil.copy(path, Path(save_directory, path.name))


class NatureLMCheckpointError(RuntimeError):
    """Weights that do not fit the model their config describes: tensors missing, unexpected or mis-shaped (the LoRA
    adapter's included). transformers only logs these and initialises the missing weights at random (a missing LoRA B
    at zero), so the model would load and answer wrongly without a sign; NatureLM refuses them instead."""


# What `from_pretrained` reads from a folder, in the order transformers prefers them; the first found is named.
_WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)
_ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def _weights_file(source: str | os.PathLike | None, names: tuple[str, ...], what: str) -> str:
    """The file of a local folder that `from_pretrained` read the weights from; the hub id or folder otherwise."""
    if source is None:
        return f"the given {what}"
    if os.path.isdir(source):
        found = [os.path.join(source, name) for name in names if os.path.isfile(os.path.join(source, name))]
        return found[0] if found else f"the {what} of {source}"
    return f"the {what} of {source}"


def _loading_problems(loading_info, accept_mismatched: bool = False) -> list[str]:
    """transformers' loading report (`output_loading_info`) as phrases: the missing, unexpected and mis-shaped tensors,
    their names grouped by layer as transformers' own report groups them."""
    info = loading_info.to_dict() if hasattr(loading_info, "to_dict") else loading_info

    def first(items: list[str]) -> str:
        return ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")

    def names(keys) -> str:
        return first(sorted(update_key_name(set(keys))))

    problems = []
    if info["missing_keys"]:
        problems.append(f"{len(info['missing_keys'])} weight(s) missing: {names(info['missing_keys'])}")
    if info["unexpected_keys"]:
        problems.append(f"{len(info['unexpected_keys'])} unexpected: {names(info['unexpected_keys'])}")
    if info["mismatched_keys"] and not accept_mismatched:
        mismatched = info["mismatched_keys"]
        shapes = sorted(f"{key} (file {tuple(file)}, model {tuple(model)})" for key, file, model in mismatched)
        problems.append(f"{len(shapes)} mis-shaped: {first(shapes)}")
    return problems


def _refuse(where: str, problems: list[str], config: str = "config.json") -> None:
    if problems:
        raise NatureLMCheckpointError(
            f"{where} does not fit the model its {config} describes ({'; '.join(problems)}); loaded anyway, the "
            "model would answer with random weights in their place. Download or convert the model again (a file is "
            f"incomplete or from another model), or correct {config} if it claims layers or sizes the weights lack."
        )


class _GradMultiply(torch.autograd.Function):
    """Identity forward, scaled gradient backward: BEATs' layer-wise gradient decay."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class NatureLMBeatsWeightNormConv1d(nn.Conv1d):
    """A weight-normalised (over `dim=2`) grouped Conv1d that convolves through the FFT.

    BEATs' positional convolution has 128 taps and 16 groups; as a product of spectra it costs ~30x fewer FLOPs than
    direct convolution and measured 4-7x faster on CPU, with the same result to fp32 rounding. Normalising inside its
    own `__init__` keeps it working under DeepSpeed ZeRO-3's `zero.Init`, which partitions a module's parameters as
    soon as its `__init__` returns (a plain Conv1d would be partitioned before `weight_norm` could read its weight);
    computing inside its own `forward` lets ZeRO-3 gather them there.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.stride != (1,) or self.dilation != (1,) or self.padding_mode != "zeros":
            raise ValueError("Only stride 1, dilation 1 and zero padding are supported.")
        nn.utils.parametrizations.weight_norm(self, name="weight", dim=2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """`(batch, channels, time)` -> `(batch, channels, time + 2 * padding - kernel_size + 1)`, as `nn.Conv1d`."""
        batch, _, length = hidden_states.shape
        out_channels, group_channels, taps = self.weight.shape
        groups, padding = self.groups, self.padding[0]
        n_fft = length + taps  # long enough for a linear (not circular) convolution
        # cross-correlation = convolution with the flipped kernel; spectra laid out (groups, freq, ..., channels)
        signal = torch.fft.rfft(hidden_states.float(), n=n_fft).view(batch, groups, group_channels, -1)
        kernel = torch.fft.rfft(self.weight.float().flip(-1), n=n_fft).view(groups, -1, group_channels, n_fft // 2 + 1)
        spectrum = torch.matmul(signal.permute(1, 3, 0, 2), kernel.permute(0, 3, 2, 1))  # (groups, freq, batch, out)
        spectrum = spectrum.permute(2, 0, 3, 1).reshape(batch, out_channels, -1)
        start = taps - 1 - padding
        output = torch.fft.irfft(spectrum, n=n_fft)[..., start : start + length + 2 * padding - taps + 1]
        if self.bias is not None:
            output = output + self.bias.float()[:, None]
        return output.to(hidden_states.dtype)


class NatureLMBeatsPositionalConvEmbedding(nn.Module):
    """Weight-normalised grouped convolution over time, added to the input as a relative position signal: the same
    computation as transformers' `WavLMPositionalConvEmbedding` (conv, drop the extra frame of an even kernel, GELU),
    with the convolution run through the FFT (see [`NatureLMBeatsWeightNormConv1d`])."""

    def __init__(self, config: NatureLMBeatsConfig):
        super().__init__()
        self.conv = NatureLMBeatsWeightNormConv1d(
            config.encoder_embed_dim,
            config.encoder_embed_dim,
            kernel_size=config.conv_pos,
            padding=config.conv_pos // 2,
            groups=config.conv_pos_groups,
        )
        # An even kernel with padding k // 2 yields one frame too many; the original drops the last one.
        self.num_pad_remove = 1 if config.conv_pos % 2 == 0 else 0

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.conv(hidden_states.transpose(1, 2))
        if self.num_pad_remove:
            hidden_states = hidden_states[:, :, : -self.num_pad_remove]
        return F.gelu(hidden_states).transpose(1, 2)


class NatureLMBeatsRelativePositionBias(nn.Module):
    """Bucketed relative position bias (T5-style, bidirectional), computed once and shared by every layer.

    BEATs took it from WavLM, so the buckets are transformers' own `WavLMAttention._relative_positions_bucket`
    (it reads only `num_buckets` and `max_distance`) and `forward` is `WavLMAttention.compute_bias` for a square
    length; the embedding keeps BEATs' name, `relative_attention_bias`, which checkpoints use.
    """

    _bucket = WavLMAttention._relative_positions_bucket

    def __init__(self, config: NatureLMBeatsConfig):
        super().__init__()
        self.num_buckets = config.num_buckets
        self.max_distance = config.max_distance
        self.relative_attention_bias = nn.Embedding(config.num_buckets, config.encoder_attention_heads)

    def forward(self, length: int) -> torch.Tensor:
        """Returns the bias of shape `(num_heads, length, length)`."""
        positions = torch.arange(length, device=self.relative_attention_bias.weight.device)
        buckets = self._bucket(positions[None, :] - positions[:, None])
        return self.relative_attention_bias(buckets).permute(2, 0, 1)


class NatureLMBeatsAttention(nn.Module):
    """Self-attention with BEATs' query-gated relative position bias, run through SDPA as an additive mask."""

    def __init__(self, config: NatureLMBeatsConfig):
        super().__init__()
        self.num_heads = config.encoder_attention_heads
        self.head_dim = config.encoder_embed_dim // self.num_heads
        self.dropout = config.attention_dropout
        self.gru_rel_pos = config.gru_rel_pos
        self.q_proj = nn.Linear(config.encoder_embed_dim, config.encoder_embed_dim)
        self.k_proj = nn.Linear(config.encoder_embed_dim, config.encoder_embed_dim)
        self.v_proj = nn.Linear(config.encoder_embed_dim, config.encoder_embed_dim)
        self.out_proj = nn.Linear(config.encoder_embed_dim, config.encoder_embed_dim)
        if self.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))

    def forward(self, hidden_states: torch.Tensor, position_bias: torch.Tensor | None) -> torch.Tensor:
        batch_size, length, _ = hidden_states.shape
        shape = (batch_size, length, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)

        bias, gate = None, None
        if position_bias is not None:
            bias = position_bias.unsqueeze(0).to(query.dtype)
            if self.gru_rel_pos:  # the gate of `WavLMAttention.forward` (steps 2-3), computed from the query as BEATs does
                gates = torch.sigmoid(self.grep_linear(query).view(batch_size, self.num_heads, length, 2, 4).sum(-1))
                gate_a, gate_b = gates.chunk(2, dim=-1)
                gate = gate_a * (gate_b * self.grep_a - 1.0) + 2.0

        # The gated bias is (batch, heads, length, length). On CPU it is built and used one clip at a time, so it
        # stays in cache (attention measured 30% faster at batch 30) and its memory is one clip's, whatever the batch.
        step = 1 if gate is not None and query.device.type == "cpu" else batch_size
        attn_output = torch.cat([
            F.scaled_dot_product_attention(
                query[first : first + step], key[first : first + step], value[first : first + step],
                attn_mask=bias if gate is None else gate[first : first + step] * bias,
                dropout_p=self.dropout if self.training else 0.0,
            )
            for first in range(0, batch_size, step)
        ])
        attn_output = attn_output.transpose(1, 2).reshape(batch_size, length, -1)
        return self.out_proj(attn_output)


class NatureLMBeatsEncoderLayer(GradientCheckpointingLayer):
    """Transformer layer, post-LN with DeepNet residual scaling (or pre-LN when `layer_norm_first`)."""

    def __init__(self, config: NatureLMBeatsConfig):
        super().__init__()
        self.layer_norm_first = config.layer_norm_first
        self.residual_scale = (2 * config.encoder_layers) ** 0.25 if config.deep_norm else 1.0
        self.self_attn = NatureLMBeatsAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(config.encoder_embed_dim)
        self.fc1 = nn.Linear(config.encoder_embed_dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, config.encoder_embed_dim)
        self.final_layer_norm = nn.LayerNorm(config.encoder_embed_dim)
        self.activation_fn = ACT2FN[config.activation_fn]
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)

    def _feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation_dropout(self.activation_fn(self.fc1(hidden_states)))
        return self.dropout(self.fc2(hidden_states))

    def forward(self, hidden_states: torch.Tensor, position_bias: torch.Tensor | None = None) -> torch.Tensor:
        if self.layer_norm_first:
            hidden_states = hidden_states + self.dropout(
                self.self_attn(self.self_attn_layer_norm(hidden_states), position_bias)
            )
            return hidden_states + self._feed_forward(self.final_layer_norm(hidden_states))
        attn_output = self.dropout(self.self_attn(hidden_states, position_bias))
        hidden_states = self.self_attn_layer_norm(hidden_states * self.residual_scale + attn_output)
        hidden_states = hidden_states * self.residual_scale + self._feed_forward(hidden_states)
        return self.final_layer_norm(hidden_states)


class NatureLMBeatsEncoder(nn.Module):
    def __init__(self, config: NatureLMBeatsConfig):
        super().__init__()
        self.config = config
        self.pos_conv = NatureLMBeatsPositionalConvEmbedding(config)
        self.relative_position = (
            NatureLMBeatsRelativePositionBias(config) if config.relative_position_embedding else None
        )
        self.layer_norm = nn.LayerNorm(config.encoder_embed_dim)
        self.layers = nn.ModuleList([NatureLMBeatsEncoderLayer(config) for _ in range(config.encoder_layers)])
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.pos_conv(hidden_states)
        if not self.config.layer_norm_first:
            hidden_states = self.layer_norm(hidden_states)
        hidden_states = F.dropout(hidden_states, p=self.config.dropout, training=self.training)
        position_bias = self.relative_position(hidden_states.shape[1]) if self.relative_position is not None else None
        decay = self.config.layer_wise_gradient_decay_ratio
        for layer in self.layers:
            if decay != 1.0 and self.training:
                hidden_states = _GradMultiply.apply(hidden_states, decay)
            if self.training and torch.rand([]) < self.config.encoder_layerdrop:
                continue
            hidden_states = layer(hidden_states, position_bias)
        if self.config.layer_norm_first:
            hidden_states = self.layer_norm(hidden_states)
        return hidden_states


@torch.no_grad()
def _init_beats_module(module: nn.Module) -> None:
    """BEATs parameters the generic initialisation does not cover."""
    if isinstance(module, NatureLMBeatsPositionalConvEmbedding):
        conv = module.conv
        std = math.sqrt(4.0 / (conv.kernel_size[0] * conv.in_channels))
        direction = conv.parametrizations.weight.original1
        init.normal_(direction, mean=0.0, std=std)
        init.copy_(conv.parametrizations.weight.original0, direction.norm(dim=(0, 1), keepdim=True))
        init.zeros_(conv.bias)
    elif isinstance(module, NatureLMBeatsAttention) and module.gru_rel_pos:
        init.ones_(module.grep_a)


class NatureLMBeatsPreTrainedModel(PreTrainedModel):
    config: NatureLMBeatsConfig
    config_class = NatureLMBeatsConfig
    base_model_prefix = "beats"
    main_input_name = "input_features"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["NatureLMBeatsEncoderLayer"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        _init_beats_module(module)


class NatureLMBeatsModel(NatureLMBeatsPreTrainedModel):
    """BEATs (Chen et al., 2022): 16x16 fbank patches -> transformer. Input is the normalised Kaldi fbank."""

    def __init__(self, config: NatureLMBeatsConfig):
        super().__init__(config)
        self.patch_embedding = nn.Conv2d(
            1, config.embed_dim, kernel_size=config.input_patch_size, stride=config.input_patch_size,
            bias=config.conv_bias,
        )
        self.layer_norm = nn.LayerNorm(config.embed_dim)
        self.post_extract_proj = (
            nn.Linear(config.embed_dim, config.encoder_embed_dim)
            if config.embed_dim != config.encoder_embed_dim
            else None
        )
        self.dropout_input = nn.Dropout(config.dropout_input)
        self.encoder = NatureLMBeatsEncoder(config)
        self.post_init()

    @can_return_tuple
    def forward(self, input_features: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> BaseModelOutput:
        r"""
        input_features (`torch.FloatTensor` of shape `(batch_size, num_frames, num_mel_bins)`):
            Normalised log-mel fbank from [`NatureLMFeatureExtractor`].

        Returns a [`BaseModelOutput`] whose `last_hidden_state` has shape
        `(batch_size, (num_frames // patch) * (num_mel_bins // patch), hidden_size)`, patches in time-major order.
        """
        patches = self.patch_embedding(input_features.unsqueeze(1).to(self.patch_embedding.weight.dtype))
        hidden_states = patches.flatten(2).transpose(1, 2)
        hidden_states = self.layer_norm(hidden_states)
        if self.post_extract_proj is not None:
            hidden_states = self.post_extract_proj(hidden_states)
        hidden_states = self.encoder(self.dropout_input(hidden_states))
        return BaseModelOutput(last_hidden_state=hidden_states)


class NatureLMWindowQFormerProjector(nn.Module):
    """LayerNorm on BEATs tokens, then a Q-Former reads each window of tokens into `num_query_tokens` vectors,
    linearly projected to the LLM width: 10 s of audio -> 29 LLM tokens with the released settings."""

    # A plain module, so the model's `post_init` reads this list from it: a Q-Former layer (self-attention over the
    # queries, cross-attention to the window, feed-forward) stays on one device.
    _no_split_modules = ["Blip2QFormerLayer"]

    def __init__(self, config: NatureLMConfig):
        super().__init__()
        self.window_tokens = config.window_tokens
        self.window_stride_tokens = config.window_stride_tokens
        self.layer_norm = nn.LayerNorm(config.audio_config.encoder_embed_dim)
        self.query = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel(config.qformer_config)
        self.linear = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)

    def forward(self, audio_hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, _, width = audio_hidden_states.shape
        if audio_hidden_states.shape[1] < self.window_tokens:
            raise ValueError(
                f"The clips give {audio_hidden_states.shape[1]} BEATs tokens, fewer than the {self.window_tokens} of one "
                "Q-Former window; use longer clips (the feature extractor's max_length_seconds)."
            )
        hidden_states = self.layer_norm(audio_hidden_states)
        # Sliding windows over time; a tail shorter than a window is dropped, as in the original's F.unfold.
        windows = hidden_states.unfold(1, self.window_tokens, self.window_stride_tokens)
        num_windows = windows.shape[1]
        windows = windows.permute(0, 1, 3, 2).reshape(batch_size * num_windows, self.window_tokens, width)
        query_output = self.qformer(
            query_embeds=self.query.expand(windows.shape[0], -1, -1), encoder_hidden_states=windows
        ).last_hidden_state
        return self.linear(query_output.to(self.linear.weight.dtype)).reshape(batch_size, -1, self.linear.out_features)


class NatureLMPreTrainedModel(PreTrainedModel):
    config: NatureLMConfig
    config_class = NatureLMConfig
    base_model_prefix = "model"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    # No list of our own: `post_init` gathers the children's (`NatureLMBeatsEncoderLayer` from the audio tower,
    # `Blip2QFormerLayer` from the projector, the language model's own, e.g. `LlamaDecoderLayer`).
    _no_split_modules = None
    _skip_keys_device_placement = CACHE_KWARG
    _supports_sdpa = True
    # No `_supports_flash_attn`: the Blip-2 Q-Former has no flash-attention path (Granite Speech, built on the same
    # Q-Former, says so too), so the model as a whole cannot claim one.
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        _init_beats_module(module)
        if isinstance(module, NatureLMWindowQFormerProjector):
            init.normal_(module.query, mean=0.0, std=self.config.qformer_config.initializer_range)


@dataclass
class NatureLMModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    audio_hidden_states (`torch.FloatTensor` of shape `(num_audio_tokens, hidden_size)`, *optional*):
        The projected audio features spliced into the language model input.
    """

    audio_hidden_states: torch.FloatTensor | None = None


@dataclass
class NatureLMCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*): mean next-token loss over the labelled tokens.
    logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`): language model scores.
    audio_hidden_states (`torch.FloatTensor` of shape `(num_audio_tokens, hidden_size)`, *optional*):
        The projected audio features spliced into the language model input.
    """

    audio_hidden_states: torch.FloatTensor | None = None


class NatureLMModel(NatureLMPreTrainedModel):
    """The towers and the language model backbone (no LM head)."""

    def __init__(self, config: NatureLMConfig):
        super().__init__(config)
        self.audio_tower = NatureLMBeatsModel(config.audio_config)
        self.audio_projector = NatureLMWindowQFormerProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    @can_return_tuple
    def get_audio_features(
        self, input_features: torch.FloatTensor, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        r"""
        input_features (`torch.FloatTensor` of shape `(num_clips, num_frames, num_mel_bins)`):
            Normalised fbank of fixed-length clips from [`NatureLMFeatureExtractor`].

        Returns a [`BaseModelOutputWithPooling`]: `last_hidden_state` holds the BEATs features and
        `pooler_output` the LLM-space audio embeddings of shape `(num_clips, num_audio_tokens, text_hidden_size)`.
        Every position is valid: clips are padded to the window, as the original was trained. The features are cast to
        the audio tower's dtype, which may differ from the language model's (e.g. fp32 encoder, bf16 LLM on CPU).
        """
        audio_hidden_states = self.audio_tower(input_features.to(self.audio_tower.dtype)).last_hidden_state
        audio_embeds = self.audio_projector(audio_hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=audio_hidden_states, pooler_output=audio_embeds)

    def get_placeholder_mask(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.FloatTensor,
        audio_embeds: torch.Tensor,
    ) -> torch.Tensor:
        """Checks, row by row, that every clip has exactly its number of placeholders, then returns their mask,
        `(batch_size, sequence_length)`. Without `input_ids` the placeholders are the positions whose embedding is
        the audio token's, as transformers' multimodal models find them."""
        if input_ids is not None:
            mask = input_ids == self.config.audio_token_id
        else:
            token = torch.tensor(self.config.audio_token_id, device=inputs_embeds.device)
            mask = (inputs_embeds == self.get_input_embeddings()(token).to(inputs_embeds.dtype)).all(-1)
        num_clips, tokens_per_clip = audio_embeds.shape[:2]
        per_row = mask.sum(-1).tolist()
        for row, count in enumerate(per_row):
            if count % tokens_per_clip:
                raise ValueError(
                    f"Row {row} has {count} audio placeholder tokens, not a multiple of the {tokens_per_clip} "
                    "tokens one clip produces; build inputs with NatureLMProcessor."
                )
        if sum(per_row) != num_clips * tokens_per_clip:
            raise ValueError(
                f"The text has {sum(per_row)} audio placeholder tokens ({sum(per_row) // tokens_per_clip} clips) but "
                f"{num_clips} clips were given ({num_clips * tokens_per_clip} audio features)."
            )
        return mask

    def get_merged_audio_embeddings(
        self,
        inputs_embeds: torch.FloatTensor,
        input_features: torch.FloatTensor,
        input_ids: torch.LongTensor | None = None,
    ) -> tuple[torch.FloatTensor, torch.FloatTensor]:
        """Runs the clips through the audio tower and projector and writes their features over the placeholder
        positions of `inputs_embeds`. Returns the merged embeddings and the audio features
        `(num_clips * num_audio_tokens, text_hidden_size)`."""
        audio_embeds = self.get_audio_features(input_features).pooler_output
        mask = self.get_placeholder_mask(input_ids, inputs_embeds, audio_embeds)
        audio_embeds = audio_embeds.reshape(-1, audio_embeds.shape[-1]).to(inputs_embeds.device, inputs_embeds.dtype)
        merged = inputs_embeds.masked_scatter(mask.unsqueeze(-1).to(inputs_embeds.device), audio_embeds)
        return merged, audio_embeds

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> NatureLMModelOutputWithPast:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Token ids with `config.audio_token_id` placeholders where the audio features go.
        input_features (`torch.FloatTensor` of shape `(num_clips, num_frames, num_mel_bins)`, *optional*):
            Fbank features of the clips, in the order their placeholders appear.
        inputs_embeds (`torch.FloatTensor` of shape `(batch_size, sequence_length, text_hidden_size)`, *optional*):
            Instead of `input_ids`: token embeddings, either already merged with the audio (see
            [`~NatureLMModel.get_merged_audio_embeddings`]) or, with `input_features`, holding the audio token's
            embedding at the placeholder positions.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        audio_embeds = None
        if input_features is not None:
            inputs_embeds, audio_embeds = self.get_merged_audio_embeddings(inputs_embeds, input_features, input_ids)

        # the KV cache travels in `kwargs` under the installed transformers' name (see CACHE_KWARG)
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            **kwargs,
        )
        return NatureLMModelOutputWithPast(**outputs, audio_hidden_states=audio_embeds)


class NatureLMForConditionalGeneration(NatureLMPreTrainedModel, GenerationMixin):
    """NatureLM-audio: answers questions about bioacoustic audio. The LoRA adapter is a peft adapter loaded through
    transformers' PEFT integration; `set_merging_alpha` rescales it at run time like the original
    `model_merging_scaling`, `merge_adapter_into_weights` folds it in permanently."""

    _tied_weights_keys = None
    # The audio side (BEATs, the Q-Former and its projection; ~95M parameters, compute-bound) is never quantized: a
    # `quantization_config` (bitsandbytes 4/8-bit) converts only the language model's Linears, and transformers keeps
    # `lm_head` as it is by default. Loaded in fp16 (GPUs without bf16, e.g. the T4), these modules are read in fp32
    # instead: BEATs' post-LN residuals were trained in fp32/bf16 range.
    _keep_in_fp32_modules = ["model.audio_tower", "model.audio_projector"]

    def __init__(self, config: NatureLMConfig):
        super().__init__(config)
        self.model = NatureLMModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.lm_head = new_embeddings

    def get_audio_features(
        self, input_features: torch.FloatTensor, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        return self.model.get_audio_features(input_features, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> NatureLMCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Target ids, -100 where no loss is taken (prompt, audio, padding); shifted inside the loss.
        """
        outputs = self.model(
            input_ids=input_ids,
            input_features=input_features,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        # contiguous: a strided (batch, 1, hidden) slice makes `matmul` fall back to a batched product that reads the
        # whole lm_head weight once per row (5x slower prefill on CPU at batch 30)
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep).contiguous())
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        rest = {key: value for key, value in outputs.items() if key != "last_hidden_state"}
        return NatureLMCausalLMOutputWithPast(loss=loss, logits=logits, **rest)

    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        """`GenerationMixin.generate`, with every clip encoded once before decoding starts, as the original does.
        transformers would repeat `input_features` for every beam and returned sequence and run the audio encoder on
        each copy (2x its cost with the 2 beams NatureLM decodes with); the prompt embeddings are expanded instead."""
        if input_features is not None:
            if input_ids is None:
                raise ValueError("`input_features` need `input_ids` to locate the audio placeholder tokens.")
            embeds = self.get_input_embeddings()(input_ids)
            kwargs["inputs_embeds"] = self.model.get_merged_audio_embeddings(embeds, input_features, input_ids)[0]
        return super().generate(input_ids=input_ids, **kwargs)

    # LoRA adapter -------------------------------------------------------------------------------------------------

    def _lora_layers(self) -> list[nn.Module]:
        return [module for module in self.modules() if hasattr(module, "set_scale") and hasattr(module, "lora_A")]

    def set_merging_alpha(self, alpha: float) -> None:
        """Scale every active LoRA update to W0 + alpha * (lora_alpha / r) * BA; alpha = 1 restores the adapter."""
        layers = self._lora_layers()
        if not layers:
            raise ValueError("This model has no LoRA adapter loaded, so there is nothing to scale.")
        for layer in layers:
            for adapter in layer.active_adapters:
                layer.set_scale(adapter, alpha)
        self.config.merging_alpha = float(alpha)

    # Loading -----------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing with a [`NatureLMCheckpointError`] weights that transformers'
        loading report finds missing, unexpected or mis-shaped, in the base weights or the LoRA adapter (transformers
        would log them and initialise the missing ones at random). `ignore_mismatched_sizes=True` accepts mis-shaped
        weights, re-initialised, as in transformers."""
        output_loading_info = kwargs.pop("output_loading_info", False)
        accept_mismatched = kwargs.pop("ignore_mismatched_sizes", False)
        # True: transformers lists mis-shaped weights in its report instead of raising an error that names none
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs
        )
        # With an adapter, `info` is the adapter's report and the base weights' is the one kept at loading
        base_info = model.__dict__.pop("_base_loading_info", None)
        reports = [(_WEIGHT_FILES, "model weights", "config.json", info if base_info is None else base_info)]
        if base_info is not None and getattr(model, "_hf_peft_config_loaded", False):
            reports.append((_ADAPTER_FILES, "LoRA adapter", "adapter_config.json", info))
        for files, what, config, report in reports:
            where = _weights_file(pretrained_model_name_or_path, files, what)
            _refuse(where, _loading_problems(report, accept_mismatched), config)
        return (model, info) if output_loading_info else model

    def _adjust_missing_and_unexpected_keys(self, loading_info, *args, **kwargs):
        """transformers' last word on the base weights' loading report, kept for `from_pretrained` to check: loading
        an adapter afterwards replaces the report `from_pretrained` returns."""
        result = super()._adjust_missing_and_unexpected_keys(loading_info, *args, **kwargs)
        self._base_loading_info = loading_info
        return result

    def load_adapter(self, peft_model_id: str | None = None, *args, **kwargs):
        """Loads a peft adapter (transformers' integration) and applies `config.merging_alpha` to it. Called by
        itself (not from `from_pretrained`, which checks the adapter with the base weights), it refuses an adapter
        whose tensors are missing, unexpected or mis-shaped, which peft would leave at their initial values."""
        direct = kwargs.get("load_config") is None
        accept_mismatched = kwargs.pop("ignore_mismatched_sizes", False) if direct else True
        if direct:
            kwargs["ignore_mismatched_sizes"] = True  # reported instead of raised, so the error can name them
        result = super().load_adapter(peft_model_id, *args, **kwargs)
        if direct:
            where = _weights_file(peft_model_id, _ADAPTER_FILES, "LoRA adapter")
            _refuse(where, _loading_problems(result, accept_mismatched), "adapter_config.json")
        if self.config.merging_alpha != 1.0:
            self.set_merging_alpha(self.config.merging_alpha)
        return result

    def merge_adapter_into_weights(self) -> None:
        """Folds the LoRA update (at the current merging alpha) into the base weights and removes the adapter, so the
        model saves and runs as a plain model without peft."""
        layers = self._lora_layers()
        if not layers:
            raise ValueError("This model has no LoRA adapter loaded, so there is nothing to merge.")
        names = {module: name for name, module in self.named_modules()}
        for layer in layers:
            layer.merge()
            parent_name, _, child = names[layer].rpartition(".")
            setattr(self.get_submodule(parent_name), child, layer.get_base_layer())
        self.peft_config = {}
        self._hf_peft_config_loaded = False
        self.config.merging_alpha = 1.0

    def save_pretrained(self, save_directory, *args, state_dict: dict | None = None, **kwargs) -> None:
        """With an adapter loaded, saves the peft adapter and, beside it, the base weights under their plain names
        (like Granite Speech), so `from_pretrained` on the folder restores both. A given `state_dict` (e.g. the
        weights DeepSpeed ZeRO-3 gathered from every rank) is saved instead of this process's own. Weights are saved
        under the model's own names: reverting the key conversions of loading would re-add the peft prefix the adapter
        loading registered, and legacy names. Every folder it writes (conversion, training output and checkpoints,
        merged copies) also declares the pipeline in config.json and holds its code file, so `pipeline(...,
        trust_remote_code=True)` loads it anywhere."""
        kwargs.setdefault("save_original_format", False)
        if self.is_remote_code() and kwargs.get("is_main_process", True):  # code files are written: the pipeline's too
            os.makedirs(save_directory, exist_ok=True)
            save_pipeline_code(self.config, save_directory)
        if not getattr(self, "_hf_peft_config_loaded", False):
            super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)
            return
        state_dict = self.state_dict() if state_dict is None else state_dict
        base_weights = {
            key.replace(".base_layer.", "."): value for key, value in state_dict.items() if ".lora_" not in key
        }
        self._hf_peft_config_loaded = False
        try:
            super().save_pretrained(save_directory, *args, state_dict=base_weights, **kwargs)
        finally:
            self._hf_peft_config_loaded = True
        for adapter_config in self.peft_config.values():
            adapter_config.base_model_name_or_path = str(save_directory)
        super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)


# Saved with its code file and an `auto_map`, so a saved folder loads with the Auto classes and `trust_remote_code`
# wherever it goes (transformers registers remote classes so when it loads them; this covers the installed modules).
NatureLMForConditionalGeneration.register_for_auto_class("AutoModel")

__all__ = [
    "NatureLMBeatsModel",
    "NatureLMBeatsPreTrainedModel",
    "NatureLMCheckpointError",
    "NatureLMForConditionalGeneration",
    "NatureLMModel",
    "NatureLMPreTrainedModel",
]
