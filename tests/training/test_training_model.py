"""The model side of training: a fresh NatureLM from BEATs + Llama, trainable parts per config, LoRA set-up, and
reading back the checkpoints the model writes."""

import json
import os

import pytest
import torch
from training_helpers import tiny_training_model
from transformers import AutoModelForCausalLM
from trl import ModelConfig

from naturelm.testing_utils import tiny_model_and_processor
from naturelm.training import (
    NatureLMArguments,
    build_model_from_parts,
    configure_trainable_parameters,
    setup_cpu_distributed,
)
from naturelm.training.trainer import load_checkpoint_weights


def test_fresh_model_from_a_beats_checkpoint_and_a_base_llama(parity_dir, beats_checkpoint, reference):
    qformer = json.loads((parity_dir / "qformer_config.json").read_text())
    model, processor = build_model_from_parts(str(parity_dir / "base_llama"), str(beats_checkpoint),
                                              qformer_config=qformer)
    model.eval()
    with torch.no_grad():
        beats = model.model.audio_tower(reference["fbank"]).last_hidden_state
        audio = model.get_audio_features(reference["fbank"]).pooler_output
    # BEATs is the original's, to the parity test's tolerance.
    assert (beats - reference["beats_features"]).abs().max() <= 1e-4
    assert audio.shape[1] == processor.num_audio_tokens
    assert model.config.qformer_config.hidden_size == qformer["hidden_size"]

    # The language model is the base Llama plus the original's [PAD] token, and answers text exactly like it.
    base = AutoModelForCausalLM.from_pretrained(parity_dir / "base_llama", dtype=torch.float32).eval()
    tokenizer = processor.tokenizer
    assert tokenizer.pad_token == "[PAD]" and tokenizer.pad_token_id == base.config.vocab_size
    assert model.config.text_config.vocab_size == base.config.vocab_size + 1
    ids = tokenizer("The song of a thrush at dawn", return_tensors="pt").input_ids
    with torch.no_grad():
        logits, expected = model(input_ids=ids).logits, base(ids).logits
    assert torch.allclose(logits[..., :-1], expected, atol=1e-5)
    end_ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eot_id|>")}
    assert end_ids <= set(model.generation_config.eos_token_id)


def _args(**model_kwargs) -> ModelConfig:
    return ModelConfig(**{"use_peft": True, "lora_r": 4, "lora_alpha": 8, **model_kwargs})


def _trainable(model) -> set[str]:
    parts = set()
    for name, param in model.named_parameters():
        if param.requires_grad:
            parts.add("lora" if ".lora_" in name else "audio_encoder" if "audio_tower" in name
                      else "audio_projector" if "audio_projector" in name else "language_model")
    return parts


@pytest.mark.parametrize(
    "flags, expected",
    [
        (dict(train_audio_encoder=True, train_audio_projector=True), {"lora", "audio_encoder", "audio_projector"}),
        (dict(train_audio_encoder=False, train_audio_projector=False), {"lora"}),
        (dict(train_audio_projector=True, use_peft=False), {"audio_projector"}),
        (dict(train_audio_projector=False, train_language_model=True, use_peft=False), {"language_model"}),
    ],
)
def test_trainable_parts_follow_the_config(tokenizer_dir, flags, expected):
    model, _ = tiny_model_and_processor(tokenizer_dir, lora_rank=0)  # no adapter yet
    use_peft = flags.pop("use_peft", True)
    counts = configure_trainable_parameters(model, _args(use_peft=use_peft), NatureLMArguments(**flags))
    assert _trainable(model) == expected
    assert {part for part, count in counts.items() if count} == expected
    lora_modules = [name for name, _ in model.named_modules() if name.endswith("lora_A")]
    if use_peft:  # on every attention projection of the language model, nowhere else (BEATs has q/k/v_proj too)
        assert len(lora_modules) == 4 * model.config.text_config.num_hidden_layers
        assert all(".language_model." in name for name in lora_modules)
        adapter = model.peft_config["default"]  # the one record of the adapter's sizes
        assert (adapter.r, adapter.lora_alpha) == (4, 8.0)
        assert not hasattr(model.config, "lora_rank") and not hasattr(model.config, "lora_alpha")
    else:
        assert not lora_modules


def test_lora_targets_by_name_or_regular_expression(tokenizer_dir):
    model, _ = tiny_model_and_processor(tokenizer_dir, lora_rank=0)
    configure_trainable_parameters(model, _args(lora_target_modules=["q_proj", "v_proj"]), NatureLMArguments())
    wrapped = {name.rsplit(".", 2)[-2] for name, _ in model.named_modules() if name.endswith("lora_A")}
    assert wrapped == {"q_proj", "v_proj"}
    model, _ = tiny_model_and_processor(tokenizer_dir, lora_rank=0)
    configure_trainable_parameters(model, _args(lora_target_modules=[r".*layers\.0\.self_attn\.o_proj"]),
                                   NatureLMArguments())
    assert [name for name, _ in model.named_modules() if name.endswith("lora_A")] == [
        "model.language_model.layers.0.self_attn.o_proj.lora_A"]


def test_an_adapter_in_the_checkpoint_is_continued_with_matching_sizes(tokenizer_dir):
    model, _ = tiny_model_and_processor(tokenizer_dir)  # carries an r=8, alpha=16 adapter
    rank, alpha = model.peft_config["default"].r, model.peft_config["default"].lora_alpha
    with pytest.raises(ValueError, match=rf"r={rank}, alpha={alpha:g}.*lora_r=4, lora_alpha=8"):
        configure_trainable_parameters(model, _args(), NatureLMArguments())
    configure_trainable_parameters(model, _args(lora_r=rank, lora_alpha=alpha, lora_dropout=0.25),
                                   NatureLMArguments())
    dropouts = [m.lora_dropout["default"] for m in model.modules() if hasattr(m, "lora_dropout")]
    assert dropouts and all(d.p == 0.25 for d in dropouts) and model.peft_config["default"].lora_dropout == 0.25
    frozen, _ = tiny_model_and_processor(tokenizer_dir)
    configure_trainable_parameters(frozen, _args(use_peft=False), NatureLMArguments())  # kept, but frozen
    assert frozen._hf_peft_config_loaded and _trainable(frozen) == {"audio_projector"}
    with pytest.raises(ValueError, match="Nothing to train"):
        configure_trainable_parameters(frozen, _args(use_peft=False), NatureLMArguments(train_audio_projector=False))


def test_trainable_half_precision_parameters_are_kept_in_float32(tokenizer_dir):
    model, _ = tiny_model_and_processor(tokenizer_dir, lora_rank=0)
    model.to(torch.bfloat16)
    configure_trainable_parameters(model, _args(), NatureLMArguments(train_audio_encoder=True))
    for name, param in model.named_parameters():
        assert param.dtype == (torch.float32 if param.requires_grad else torch.bfloat16), name


def test_checkpoint_weights_load_back_into_a_model_with_an_adapter(tokenizer_dir, tmp_path):
    trained, _ = tiny_training_model(tokenizer_dir, seed=0)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if ".lora_" in name or "audio" in name or "layers.0.self_attn.q_proj" in name:
                param.add_(torch.randn_like(param))
    trained.save_pretrained(tmp_path)
    other, _ = tiny_training_model(tokenizer_dir, seed=1)
    load_checkpoint_weights(other, str(tmp_path))
    expected = trained.state_dict()
    assert other.state_dict().keys() == expected.keys()
    for key, value in other.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_cpu_distributed_set_up_leaves_single_process_runs_alone(monkeypatch):
    """(The multi-process case is exercised by test_training_distributed.py.)"""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    before = dict(os.environ)
    assert setup_cpu_distributed(parser=None, argv=["--deepspeed", "zero2.json"]) is False
    assert dict(os.environ) == before
