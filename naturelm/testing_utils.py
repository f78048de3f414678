"""Tiny random NatureLM models with the real Llama 3 tokenizer, for tests and the smoke mode (no download needed)."""

import functools
from importlib import resources
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter

from configuration_naturelm import NatureLMConfig
from .convert import PAD_TOKEN, finish_model, naturelm_lora_config
from modeling_naturelm import NatureLMForConditionalGeneration
from processing_naturelm import NatureLMProcessor

# Llama 3's pre-tokenisation pattern and its 256 special tokens (ids 128000-128255), as in Meta's reference tokenizer.
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_NAMED_SPECIAL = {
    0: "<|begin_of_text|>",
    1: "<|end_of_text|>",
    4: "<|finetune_right_pad_id|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    8: "<|eom_id|>",
    9: "<|eot_id|>",
    10: "<|python_tag|>",
}


def _llama3_special_tokens() -> list[str]:
    tokens, reserved = [], 0
    for offset in range(256):
        if offset in _NAMED_SPECIAL:
            tokens.append(_NAMED_SPECIAL[offset])
        else:
            tokens.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return tokens


@functools.cache
def _llama3_bpe() -> str:
    """The `tokenizers` JSON of the BPE file that `llama-models` ships: converting its 128k merges takes seconds,
    so a process does it once."""
    bpe_file = resources.files("llama_models") / "llama3" / "tokenizer.model"
    return TikTokenConverter(vocab_file=str(bpe_file), pattern=_LLAMA3_PATTERN).converted().to_str()


def llama3_tokenizer(tokenizer_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """The Llama 3.1 tokenizer plus NatureLM's `[PAD]` (id 128256): from a folder, or built from the BPE file that
    the `llama-models` package ships."""
    if tokenizer_dir is not None:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    else:
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_llama3_bpe()))
        # Appended in order after the 128000 BPE tokens, they get exactly the Llama 3.1 ids.
        tokenizer.add_special_tokens({"additional_special_tokens": _llama3_special_tokens()})
        tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def tiny_config(**overrides) -> NatureLMConfig:
    """A few-MB NatureLM with the released structure (Llama 3.1 vocabulary and RoPE, 17-token windows)."""
    config = dict(
        audio_config=dict(
            embed_dim=32, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
            conv_pos=16, conv_pos_groups=4,
        ),
        qformer_config=dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, encoder_hidden_size=32),
        text_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
        ),
    )
    config.update(overrides)
    return NatureLMConfig(**config)


def tiny_model_and_processor(
    tokenizer_dir: str | Path | None = None, seed: int = 0, lora_rank: int = 8, lora_alpha: float = 16.0, **overrides
) -> tuple[NatureLMForConditionalGeneration, NatureLMProcessor]:
    """Random tiny model (a LoRA adapter of `lora_rank` and `lora_alpha` attached, with non-zero B so it matters; none
    with `lora_rank=0`) and its processor. `overrides` are `NatureLMConfig` fields."""
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    model = NatureLMForConditionalGeneration(config)
    if lora_rank > 0:
        model.add_adapter(naturelm_lora_config(lora_rank, lora_alpha))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.02)
    processor = finish_model(model, llama3_tokenizer(tokenizer_dir))
    return model.eval(), processor
