"""Convert an original NatureLM-audio checkpoint (earthspecies/NatureLM-audio) into a Hugging Face remote-code folder.

The original folder holds `config.json` (the constructor kwargs of the original class) and `model.safetensors`, either
the full state dict or the hub layout (trained parts + `llama_embed_tokens`, base LM weights left out). The base
Llama folder supplies the LLM config, the tokenizer and, in the hub layout, the frozen LM weights. Every tensor is
mapped by an explicit rule; an unmapped, missing or mis-shaped tensor stops the conversion with its name.
"""

import copy
import json
import re
from pathlib import Path

import torch
from accelerate import init_empty_weights
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoTokenizer, Blip2QFormerConfig, GenerationConfig, LlamaConfig

from configuration_naturelm import NatureLMConfig
from feature_extraction_naturelm import NatureLMFeatureExtractor
from modeling_naturelm import NatureLMForConditionalGeneration
from processing_naturelm import NatureLMProcessor
from .options import DTYPE_NAMES

PAD_TOKEN = "[PAD]"
LLAMA3_END_TOKENS = ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
DTYPES = {name: getattr(torch, dtype) for name, dtype in DTYPE_NAMES.items()}
# How the original decodes (its `configs/inference.yml`, and the paper's results): beam search with 2 beams, no
# sampling, no repetition or length penalty, up to 300 new tokens. A base Llama's generation config samples (Meta's
# Llama-3.1-8B-Instruct: do_sample, temperature 0.6, top_p 0.9), so every NatureLM checkpoint writes these over it.
ORIGINAL_DECODING = dict(
    num_beams=2, do_sample=False, max_new_tokens=300, repetition_penalty=1.0, length_penalty=1.0,
    temperature=None, top_p=None, top_k=None,
)

# The original builds its Q-Former from bert-base-uncased's config (head counts cannot be read off weight shapes);
# NatureLMConfig's Q-Former defaults are exactly those values.
BERT_BASE_QFORMER = NatureLMConfig.sub_configs_defaults["qformer_config"].init_kwargs

# Tensors of the original that NatureLM never uses, dropped on purpose (anything else unmapped is an error).
_DROPPED = [
    re.compile(r"beats\.predictor\.(weight|bias)"),  # BEATs' AudioSet classifier head
    re.compile(r"audio_Qformer\.bert\.embeddings\.position_ids"),  # a constant buffer
]
# Aliases of other tensors: only kept if they really equal their source.
_ALIASES = {
    re.compile(r"beats\.encoder\.layers\.[1-9]\d*\.self_attn\.relative_attention_bias\.weight"): (
        "beats.encoder.layers.0.self_attn.relative_attention_bias.weight"
    ),
    re.compile(r"llama_model\.(base_model\.model\.)?model\.embed_tokens\.weight"): "llama_embed_tokens.weight",
}
_RENAMES = [
    (r"beats\.encoder\.pos_conv\.0\.weight_g", "model.audio_tower.encoder.pos_conv.conv.parametrizations.weight.original0"),
    (r"beats\.encoder\.pos_conv\.0\.weight_v", "model.audio_tower.encoder.pos_conv.conv.parametrizations.weight.original1"),
    (r"beats\.encoder\.pos_conv\.0\.bias", "model.audio_tower.encoder.pos_conv.conv.bias"),
    (
        r"beats\.encoder\.layers\.0\.self_attn\.relative_attention_bias\.weight",
        "model.audio_tower.encoder.relative_position.relative_attention_bias.weight",
    ),
    (r"beats\.(.+)", r"model.audio_tower.\1"),
    (r"ln_audio\.(weight|bias)", r"model.audio_projector.layer_norm.\1"),
    (r"audio_query_tokens", "model.audio_projector.query"),
    (r"audio_Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)", r"model.audio_projector.qformer.layernorm.\1"),
    (
        r"audio_Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(.+)",
        r"model.audio_projector.qformer.encoder.layer.\1.\2.attention.\3",
    ),
    (r"audio_Qformer\.bert\.encoder\.(.+)", r"model.audio_projector.qformer.encoder.\1"),
    (r"audio_llama_proj\.(weight|bias)", r"model.audio_projector.linear.\1"),
    (r"llama_embed_tokens\.weight", "model.language_model.embed_tokens.weight"),
    (r"llama_model\.(?:base_model\.model\.)?lm_head\.weight", "lm_head.weight"),
    (
        r"llama_model\.base_model\.model\.model\.(.+)\.lora_([AB])\.default\.weight",
        r"model.language_model.\1.lora_\2.default.weight",
    ),
    (r"llama_model\.(?:base_model\.model\.)?model\.(.+)", r"model.language_model.\1"),
]
_RENAMES = [(re.compile(pattern), target) for pattern, target in _RENAMES]
_LORA_TARGET = r".*language_model.*\.({})"
# The original's LoRA targets: every attention projection of the language model.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


class ConversionError(ValueError):
    """The original checkpoint does not fit the model it describes."""


def load_original_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Reads `model.safetensors` (resolving the aliases saved in its metadata) or a `.pt`/`.pth` file (safely)."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / name for name in ("model.safetensors", "model.pt", "model.pth")]
        path = next((c for c in candidates if c.exists()), candidates[0])
    if not path.exists():
        raise ConversionError(f"No original checkpoint at {path} (expected model.safetensors, model.pt or model.pth).")
    if path.suffix == ".safetensors":
        state_dict = load_file(path)
        with safe_open(path, "pt") as handle:
            metadata = handle.metadata() or {}
        for alias, source in metadata.items():
            if source in state_dict and alias not in state_dict:
                state_dict[alias] = state_dict[source]
        return state_dict
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint.get("model", checkpoint)


def build_config(
    original_config: dict,
    text_config: dict,
    qformer_config: dict | None = None,
    vocab_size: int | None = None,
    merging_alpha: float = 1.0,
) -> NatureLMConfig:
    """Maps the original constructor kwargs, the base LM config and the Q-Former sizes onto a `NatureLMConfig`."""
    if not original_config.get("use_audio_Qformer", True) or not original_config.get("window_level_Qformer", True):
        raise ConversionError("Only the window-level Q-Former variant (the released model) is supported.")
    beats = original_config["beats_cfg"]
    qformer = {**BERT_BASE_QFORMER, **(qformer_config or {}), "encoder_hidden_size": beats["encoder_embed_dim"]}
    text = LlamaConfig(**text_config).to_dict()
    if vocab_size is not None:
        text["vocab_size"] = vocab_size
    return NatureLMConfig(
        audio_config=dict(beats),
        qformer_config=Blip2QFormerConfig(**qformer).to_dict(),
        text_config=text,
        window_seconds=original_config["second_per_window"],
        window_stride_seconds=original_config["second_stride"],
        num_query_tokens=original_config["num_audio_query_token"],
        merging_alpha=merging_alpha,
    )


def map_original_key(key: str) -> str | None:
    """The new name of an original tensor, or None for a tensor dropped on purpose."""
    if any(pattern.fullmatch(key) for pattern in _DROPPED):
        return None
    for pattern, target in _RENAMES:
        if pattern.fullmatch(key):
            return pattern.sub(target, key)
    raise ConversionError(f"Unmapped tensor in the original checkpoint: {key}")


def convert_state_dict(
    original: dict[str, torch.Tensor], base_lm: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Renames every original tensor; in the hub layout the frozen LM weights come from the base Llama's state dict."""
    converted = {}
    for key, tensor in original.items():
        alias_of = next((source for pattern, source in _ALIASES.items() if pattern.fullmatch(key)), None)
        if alias_of is not None:
            if alias_of not in original or not torch.equal(original[alias_of], tensor):
                raise ConversionError(f"{key} should be an alias of {alias_of} but differs from it.")
            continue
        new_key = map_original_key(key)
        if new_key is not None:
            converted[new_key] = tensor
    for key, tensor in (base_lm or {}).items():
        if key == "model.embed_tokens.weight":
            continue  # the original's own embedding (with the [PAD] row) is `llama_embed_tokens`
        new_key = "lm_head.weight" if key == "lm_head.weight" else re.sub(r"^model\.", "model.language_model.", key)
        if new_key in converted:
            raise ConversionError(f"{key} is both in the original checkpoint and in the base LM.")
        converted[new_key] = tensor
    return converted


def _match_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], lora: bool) -> dict:
    """Checks names and shapes against the model, renaming LoRA-wrapped base weights; returns what to load."""
    expected = model.state_dict()
    if lora:
        wrapped = {re.sub(r"\.base_layer\.weight$", ".weight", k): k for k in expected if k.endswith(".base_layer.weight")}
        state_dict = {wrapped.get(k, k): v for k, v in state_dict.items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ConversionError(f"Checkpoint does not fit the model: missing {missing[:20]}, unexpected {unexpected[:20]}")
    for key, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            if key == "lm_head.weight" and tensor.shape[0] < expected[key].shape[0]:
                # A base LM head without the added [PAD] row: the original initialised new rows near the mean.
                extra = tensor.float().mean(0, keepdim=True).expand(expected[key].shape[0] - tensor.shape[0], -1)
                state_dict[key] = torch.cat([tensor, extra.to(tensor.dtype)])
                continue
            raise ConversionError(
                f"Shape mismatch for {key}: checkpoint {tuple(tensor.shape)} vs model {tuple(expected[key].shape)}"
            )
    return state_dict


def language_model_targets(names: str | list[str] | tuple[str, ...]) -> str:
    """A regular expression matching the modules called `names` (e.g. `q_proj`) inside the language model only:
    BEATs has `q_proj`s too."""
    names = [names] if isinstance(names, str) else list(names)
    return _LORA_TARGET.format("|".join(map(re.escape, names)))


def naturelm_lora_config(
    r: int, lora_alpha: float, lora_dropout: float = 0.0, target_modules: str | list[str] = LORA_TARGET_MODULES
) -> LoraConfig:
    """The peft adapter of NatureLM, the one place its rank and alpha live: LoRA on the language model's attention
    (module names are restricted to the language model; a regular expression string is used as given)."""
    if not isinstance(target_modules, str):
        target_modules = language_model_targets(target_modules)
    return LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=target_modules)


def lora_config_from_original(original_config: dict) -> LoraConfig | None:
    """The adapter an original checkpoint describes (`lora`, `lora_rank`, `lora_alpha`, `lora_dropout` of its
    config.json), or None when it was trained without one."""
    if not original_config.get("lora", True) or not original_config.get("lora_rank"):
        return None
    return naturelm_lora_config(
        original_config["lora_rank"], original_config["lora_alpha"], original_config.get("lora_dropout", 0.0)
    )


def load_tokenizer(base_model: str | Path, vocab_size: int | None = None):
    """The base Llama tokenizer plus the original's `[PAD]` token (checked against `vocab_size` when given)."""
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if PAD_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.pad_token = PAD_TOKEN
    if vocab_size is not None and len(tokenizer) != vocab_size:
        raise ConversionError(f"Tokenizer has {len(tokenizer)} tokens but the checkpoint's embedding has {vocab_size}.")
    return tokenizer


def from_original(
    original_dir: str | Path,
    base_model: str | Path,
    qformer_config: dict | str | Path | None = None,
    merging_alpha: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[NatureLMForConditionalGeneration, NatureLMProcessor]:
    """Builds the model and processor from an original checkpoint folder (or hub id) and a base Llama folder (or hub
    id), without passing through fp32 when `dtype` is lower: parameters are created empty and assigned."""
    original_dir, base_model = _local(original_dir), _local(base_model)
    if isinstance(qformer_config, (str, Path)):
        qformer_config = json.loads(Path(qformer_config).read_text())
    if not (original_dir / "config.json").is_file():
        raise ConversionError(f"{original_dir} has no config.json; expected an original NatureLM-audio checkpoint.")
    original_config = json.loads((original_dir / "config.json").read_text())
    original = load_original_state_dict(original_dir)
    vocab_size = original["llama_embed_tokens.weight"].shape[0]
    text_config = json.loads((base_model / "config.json").read_text())
    config = build_config(original_config, text_config, qformer_config, vocab_size, merging_alpha)

    full_layout = any(k.endswith("lm_head.weight") for k in original)
    base_lm = None if full_layout else _load_base_lm(base_model)
    state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in convert_state_dict(original, base_lm).items()}

    adapter = lora_config_from_original(original_config)
    lora = adapter is not None
    with init_empty_weights():
        model = NatureLMForConditionalGeneration(config)
        if lora:
            model.add_adapter(adapter)
    model.load_state_dict(_match_state_dict(model, state_dict, lora), strict=True, assign=True)
    model.to(dtype).eval()
    if lora and merging_alpha != 1.0:
        model.set_merging_alpha(merging_alpha)

    tokenizer = load_tokenizer(base_model, vocab_size)
    generation_path = base_model / "generation_config.json"
    generation = GenerationConfig.from_pretrained(base_model) if generation_path.exists() else GenerationConfig()
    return model, finish_model(model, tokenizer, generation)


def naturelm_generation_config(tokenizer, base: GenerationConfig | None = None) -> GenerationConfig:
    """The base LM's generation config made NatureLM's: the original's decoding (`ORIGINAL_DECODING`), stopping on
    every Llama 3.1 end token, padding with `[PAD]`."""
    generation = copy.deepcopy(base) if base is not None else GenerationConfig()
    vocab = tokenizer.get_vocab()
    end_ids = {vocab[token] for token in LLAMA3_END_TOKENS if token in vocab}
    generation.update(
        **ORIGINAL_DECODING,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=sorted({*_as_list(generation.eos_token_id), *end_ids}),
        pad_token_id=tokenizer.pad_token_id,
    )
    generation.validate(strict=True)
    return generation


def finish_model(
    model: NatureLMForConditionalGeneration, tokenizer, generation: GenerationConfig | None = None
) -> NatureLMProcessor:
    """Sets the generation config (`naturelm_generation_config` over the base LM's) and returns the processor that
    matches the model's windowing."""
    config = model.config
    config.text_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = naturelm_generation_config(tokenizer, generation)
    return NatureLMProcessor(NatureLMFeatureExtractor(), tokenizer, **NatureLMProcessor.windowing_from_config(config))


def convert(
    original_dir: str | Path,
    output_dir: str | Path,
    base_model: str | Path,
    qformer_config: str | Path | None = None,
    merging_alpha: float = 1.0,
    dtype: str = "bf16",
) -> Path:
    """Writes a folder that loads with `AutoModel`/`AutoProcessor.from_pretrained(..., trust_remote_code=True)`."""
    model, processor = from_original(original_dir, base_model, qformer_config, merging_alpha, DTYPES[dtype])
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)  # with the code files, the pipeline's included (declared in config.json)
    processor.save_pretrained(output_dir)
    return output_dir


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _load_base_lm(base_model: Path) -> dict[str, torch.Tensor]:
    files = sorted(base_model.glob("*.safetensors"))
    if not files:
        raise ConversionError(f"The hub layout needs the base LM weights, but {base_model} has no *.safetensors.")
    return {k: v for f in files for k, v in load_file(f).items()}


def _local(path_or_id: str | Path) -> Path:
    """A local folder as is; otherwise a hub id, downloaded (needs access to the gated repos)."""
    if Path(path_or_id).is_dir():
        return Path(path_or_id)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path_or_id)))
