"""Behaviour of the model on tiny random weights with the real Llama 3 tokenizer."""

import copy

import numpy as np
import pytest
import torch

from modeling_naturelm import NatureLMBeatsWeightNormConv1d
from naturelm.testing_utils import tiny_model_and_processor

@pytest.fixture(scope="module")
def tiny(tokenizer_dir):
    return tiny_model_and_processor(tokenizer_dir)


@pytest.fixture(scope="module")
def clips(reference):
    clips = [clip.numpy() for clip in reference["waveform"]]
    assert len(clips) >= 2, "these tests batch several clips"
    return clips


@pytest.fixture(scope="module")
def queries(reference_io, clips) -> list[str]:
    """One question per clip: the fixture's (of different lengths, so that a batch of them needs padding)."""
    assert len(reference_io["queries"]) == len(clips)
    return reference_io["queries"]


def _prompt(processor, query: str, num_audios: int = 1) -> str:
    content = [{"type": "audio"}] * num_audios + [{"type": "text", "text": query}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


@pytest.mark.parametrize(
    "window_seconds, stride_seconds, num_query_tokens",
    [(0.333333, 0.333333, 1), (0.5, 0.25, 2)],  # the released windows, and overlapping windows with 2 queries
)
def test_token_count_of_processor_matches_model_output(tokenizer_dir, clips, window_seconds, stride_seconds,
                                                       num_query_tokens):
    model, processor = tiny_model_and_processor(
        tokenizer_dir, window_seconds=window_seconds, window_stride_seconds=stride_seconds,
        num_query_tokens=num_query_tokens,
    )
    features = processor.feature_extractor(clips[:1], sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        embeds = model.get_audio_features(features).pooler_output
    assert embeds.shape[1] == processor.num_audio_tokens
    batch = processor(text=_prompt(processor, "Hi"), audio=clips[0], sampling_rate=16000)
    assert (batch["input_ids"] == model.config.audio_token_id).sum() == embeds.shape[1]


def test_placeholder_mismatch_is_an_error_naming_both_numbers(tiny, clips, queries):
    model, processor = tiny
    batch = processor(text=[_prompt(processor, q) for q in queries], audio=clips, sampling_rate=16000)
    n = processor.num_audio_tokens
    one_short = batch["input_ids"].clone()
    one_short[0, (one_short[0] == model.config.audio_token_id).nonzero()[0]] = 0
    with pytest.raises(ValueError, match=rf"Row 0 has {n - 1} audio placeholder tokens.*{n} tokens"):
        model(input_ids=one_short, input_features=batch["input_features"])
    k = len(clips)
    with pytest.raises(ValueError, match=rf"{k * n} audio placeholder tokens \({k} clips\) but {k - 1} clips"):
        model(input_ids=batch["input_ids"], input_features=batch["input_features"][:-1])


@pytest.mark.parametrize("num_beams", [1, 2])
def test_batched_generation_equals_per_clip(tiny, clips, queries, num_beams):
    model, processor = tiny
    prompts = [_prompt(processor, q) for q in queries]
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=num_beams)
    single = []
    for prompt, clip in zip(prompts, clips):
        inputs = processor(text=prompt, audio=clip, sampling_rate=16000)
        single.append(model.generate(**inputs, **kwargs)[0, inputs["input_ids"].shape[1]:].tolist())
    batch = processor(text=prompts, audio=clips, sampling_rate=16000)
    assert (batch["attention_mask"] == 0).any(), "prompts of different lengths must be left-padded"
    assert model.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1]:].tolist() == single


def test_sampling_is_reproducible_with_a_seed(tiny, clips, queries):
    model, processor = tiny
    inputs = processor(text=_prompt(processor, queries[-1]), audio=clips[-1], sampling_rate=16000)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(model.generate(**inputs, do_sample=True, top_k=50, max_new_tokens=5, min_new_tokens=5))
    assert torch.equal(runs[0], runs[1]) and runs[0].shape[1] == inputs["input_ids"].shape[1] + 5


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_merging_alpha(tiny, clips, queries):
    model, processor = tiny
    batch = processor(text=[_prompt(processor, q) for q in queries], audio=clips, sampling_rate=16000)
    full = _logits(model, batch)

    model.set_merging_alpha(0.0)
    zero = _logits(model, batch)
    model.disable_adapters()
    base = _logits(model, batch)
    model.enable_adapters()
    assert torch.allclose(zero, base, atol=1e-6)
    assert not torch.allclose(full, base, atol=1e-3), "the adapter must matter for this test to mean anything"

    # W0 + 0.5 * (alpha / r) * BA is the adapter at alpha = 1 with B halved.
    model.set_merging_alpha(0.5)
    half = _logits(model, batch)
    halved = copy.deepcopy(model)
    halved.set_merging_alpha(1.0)
    with torch.no_grad():
        for name, param in halved.named_parameters():
            if "lora_B" in name:
                param.mul_(0.5)
    assert torch.allclose(half, _logits(halved, batch), atol=1e-5)

    model.set_merging_alpha(1.0)
    assert torch.equal(_logits(model, batch), full)


def test_merge_adapter_into_weights_keeps_outputs_and_drops_peft(tokenizer_dir, clips, queries, tmp_path):
    model, processor = tiny_model_and_processor(tokenizer_dir, seed=1)
    batch = processor(text=_prompt(processor, queries[0]), audio=clips[0], sampling_rate=16000)
    model.set_merging_alpha(0.5)
    expected = _logits(model, batch)
    model.merge_adapter_into_weights()
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert torch.allclose(_logits(model, batch), expected, atol=1e-5)
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert torch.allclose(_logits(reloaded, batch), expected, atol=1e-5)


def test_adapter_save_and_reload_round_trip(tiny, clips, queries, tmp_path):
    model, processor = tiny
    batch = processor(text=_prompt(processor, queries[0]), audio=clips[0], sampling_rate=16000)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists()
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert reloaded._hf_peft_config_loaded
    assert torch.allclose(_logits(reloaded, batch), _logits(model, batch), atol=1e-6)


def test_loss_is_the_mean_over_answer_tokens_and_gradients_reach_every_part(tokenizer_dir, clips, queries,
                                                                           reference_io):
    model, processor = tiny_model_and_processor(tokenizer_dir, seed=2)
    model.train()
    # peft freezes everything but the adapter; unfreeze the audio side as the original's training did.
    for param in [*model.model.audio_tower.parameters(), *model.model.audio_projector.parameters()]:
        param.requires_grad_(True)
    batch = processor(text=[_prompt(processor, q) for q in queries], audio=clips, sampling_rate=16000,
                      answers=reference_io["targets"])
    output = model(**batch)
    shift_labels = batch["labels"][:, 1:]
    manual = torch.nn.functional.cross_entropy(output.logits[:, :-1].transpose(1, 2), shift_labels,
                                               ignore_index=-100)
    assert torch.allclose(output.loss, manual, atol=1e-5)
    output.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    for part in ("audio_tower.patch_embedding", "audio_projector.qformer", "audio_projector.query", "lora_B"):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if part in n), part


def test_bad_audio_is_a_clear_error(tiny):
    _, processor = tiny
    prompt = _prompt(processor, "Which species is calling? Answer:")
    cases = [
        (np.zeros(0, dtype=np.float32), 16000, "0 samples|empty"),
        (np.full(16000, np.nan, dtype=np.float32), 16000, "non-finite|NaN"),
        (np.zeros(16000, dtype=np.int16), 16000, "int16"),
        (np.zeros(16000, dtype=np.float32), 0, "sampling_rate"),
        (np.zeros(16000, dtype=np.float32), None, "sampling_rate"),
    ]
    for audio, rate, message in cases:
        with pytest.raises(ValueError, match=message):
            processor(text=prompt, audio=audio, sampling_rate=rate)


def test_gradient_checkpointing_gives_the_same_gradients(tokenizer_dir, clips, queries):
    grads = []
    for checkpointing in (False, True):
        model, processor = tiny_model_and_processor(tokenizer_dir, seed=3)
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        for param in model.model.audio_tower.parameters():
            param.requires_grad_(True)
        batch = processor(text=_prompt(processor, queries[0]), audio=clips[0], sampling_rate=16000, answers="A frog.")
        model(**batch).loss.backward()
        grads.append(model.model.audio_tower.patch_embedding.weight.grad.clone())
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize("kernel_size, groups", [(128, 16), (5, 2), (4, 4)])
def test_fft_positional_convolution_equals_direct_convolution(kernel_size, groups):
    torch.manual_seed(0)
    conv = NatureLMBeatsWeightNormConv1d(8 * groups, 8 * groups, kernel_size, padding=kernel_size // 2, groups=groups)
    torch.nn.init.normal_(conv.bias)
    inputs = torch.randn(3, 8 * groups, 150, requires_grad=True)
    direct = torch.nn.functional.conv1d(inputs, conv.weight, conv.bias, padding=kernel_size // 2, groups=groups)
    output = conv(inputs)
    assert output.shape == direct.shape
    torch.testing.assert_close(output, direct, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(direct)
    expected = torch.autograd.grad(direct, [inputs, *conv.parameters()], grad)
    for ours, theirs in zip(torch.autograd.grad(output, [inputs, *conv.parameters()], grad), expected):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
