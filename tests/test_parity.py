"""Numerical parity with the original NatureLM-audio implementation, on the checkpoint it wrote (both layouts).

Every size, prompt and tolerance target comes from the fixture; the processor builds all model inputs from the
waveform, the queries and the targets. The prompt tests also run on a fixture derived from it whose queries hold the
audio placeholder mid-sentence (`parity_fixture.py`), so that case stays covered whatever the recorded queries are.
"""

import json

import pytest
import torch
from parity_fixture import write_derived_fixture
from safetensors.torch import load_file

from naturelm.convert import from_original
from pipeline_naturelm import build_prompt
from processing_naturelm import AUDIO_PLACEHOLDER, audio_instruction

LAYOUTS = ["original_checkpoint_full", "original_checkpoint_hub_layout"]


@pytest.fixture(scope="module", params=LAYOUTS)
def converted(request, parity_dir):
    model, processor = from_original(
        parity_dir / request.param, parity_dir / "base_llama", parity_dir / "qformer_config.json"
    )
    return request.param, model, processor


@pytest.fixture(scope="module")
def mid_sentence_dir(parity_dir, tmp_path_factory):
    return write_derived_fixture(parity_dir, tmp_path_factory.mktemp("parity_mid_sentence"))


@pytest.fixture(scope="module", params=["recorded", "mid_sentence"])
def prompt_fixture(request, reference_io, reference) -> tuple[dict, dict[str, torch.Tensor]]:
    """`(reference_io, reference tensors)` of the recorded fixture, or of the one derived from it whose queries hold
    the placeholder mid-sentence (its prompts and audio tensors only)."""
    if request.param == "recorded":
        return reference_io, reference
    folder = request.getfixturevalue("mid_sentence_dir")
    return json.loads((folder / "reference_io.json").read_text()), load_file(folder / "reference_outputs.safetensors")


# A query either leaves the audio to the prompt format, or already holds the placeholder (as BEANS-Zero instructions
# and many user prompts do): by the original's rule both give the same prompt, with exactly one clip.
QUERY_FORMS = ["plain", "holds_placeholder"]


def _prompts(processor, reference_io, form: str = "plain") -> list[str]:
    queries = reference_io["queries"]
    if form == "holds_placeholder":  # the package's own rule puts the placeholder into the queries that lack it
        queries = [audio_instruction(query) for query in queries]
    return [build_prompt(processor, query) for query in queries]


def _training_batch(processor, reference, reference_io):
    return processor(
        text=_prompts(processor, reference_io),
        audio=list(reference["waveform"]),
        sampling_rate=16000,
        answers=reference_io["targets"],
    )


def _original_input_ids(tokenizer, prompt: str, audio_token_id: int, num_audio_tokens: int) -> list[int]:
    """What the original feeds the LM for a recorded prompt, as ids (its `prompt_wrap`): BOS, then the pieces of the
    prompt between placeholders, each tokenized on its own, with the clip's audio vectors where the placeholder was."""
    ids = [tokenizer.bos_token_id]
    for i, piece in enumerate(prompt.split(AUDIO_PLACEHOLDER)):
        ids += [audio_token_id] * num_audio_tokens if i else []
        ids += tokenizer(piece, add_special_tokens=False).input_ids
    return ids


@pytest.fixture(scope="module")
def base_vocab_size(parity_dir) -> int:
    """The base LM's vocabulary (the ids after it, such as [PAD], were added by the original)."""
    return json.loads((parity_dir / "base_llama" / "config.json").read_text())["vocab_size"]


def _vocab_columns(layout: str, reference, base_vocab_size: int) -> torch.Tensor:
    """Columns of `logits_vocab_ids` to compare. The hub layout has no trained lm_head row for the added [PAD]
    token (the base LM lacks it), so its logit is excluded there, as the fixture README states."""
    ids = reference["logits_vocab_ids"]
    if layout == "original_checkpoint_hub_layout":
        return (ids < base_vocab_size).nonzero().squeeze(1)
    return torch.arange(len(ids))


@pytest.mark.parametrize("form", QUERY_FORMS)
def test_chat_template_reproduces_original_prompt(converted, prompt_fixture, form):
    _, _, processor = converted
    reference_io, _ = prompt_fixture
    bos = processor.tokenizer.bos_token
    assert _prompts(processor, reference_io, form) == [bos + prompt for prompt in reference_io["prompts"]]


def test_prompt_places_the_audio_where_the_original_does(converted, prompt_fixture):
    """Ids as the original tokenizes the recorded prompt around its placeholder, and the clip's audio vectors (which
    depend on the audio alone) at the audio positions, wherever the query puts the placeholder."""
    _, model, processor = converted
    reference_io, reference = prompt_fixture
    assert len(reference["waveform"]) == len(reference_io["queries"]), "one clip per query"
    num_audio_tokens = reference["audio_embeds"].shape[1]
    for i, (prompt, recorded) in enumerate(zip(_prompts(processor, reference_io), reference_io["prompts"])):
        assert recorded.count(AUDIO_PLACEHOLDER) == 1, "the original gives each query one clip"
        inputs = processor(text=prompt, audio=reference["waveform"][i], sampling_rate=16000)
        ids = inputs["input_ids"][0]
        assert ids.tolist() == _original_input_ids(processor.tokenizer, recorded, processor.audio_token_id,
                                                   num_audio_tokens)
        with torch.no_grad():
            embeds = model(**inputs, output_hidden_states=True).hidden_states[0][0]
        assert (embeds[ids == processor.audio_token_id] - reference["audio_embeds"][i]).abs().max() <= 1e-4


def test_audio_features_match(converted, reference):
    """The model from the original's own fbank, then end to end from the waveform. The fbank itself is checked in
    test_feature_extraction_naturelm.py: a few near-silent mel bins differ by fp32 FFT rounding between CPUs (this
    machine's torchaudio differs from the recorded fbank there too), so the model is isolated from it here."""
    _, model, processor = converted
    with torch.no_grad():
        output = model.get_audio_features(reference["fbank"])
    assert output.last_hidden_state.shape == reference["beats_features"].shape
    assert (output.last_hidden_state - reference["beats_features"]).abs().max() <= 1e-4
    assert output.pooler_output.shape == reference["audio_embeds"].shape
    assert (output.pooler_output - reference["audio_embeds"]).abs().max() <= 1e-4
    assert processor.num_audio_tokens == output.pooler_output.shape[1]

    features = processor.feature_extractor(list(reference["waveform"]), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        end_to_end = model.get_audio_features(features.input_features).pooler_output
    assert (end_to_end - reference["audio_embeds"]).abs().max() <= 1e-4


def test_training_forward_matches(converted, reference, reference_io, base_vocab_size):
    layout, model, processor = converted
    batch = _training_batch(processor, reference, reference_io)
    assert torch.equal(batch["labels"], reference["labels"].long())
    assert torch.equal(batch["attention_mask"], reference["llm_attention_mask"].long())
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True)
    # Padded positions hold zeros in the original and the [PAD] embedding here; both are masked out.
    valid = batch["attention_mask"].bool()
    assert (output.hidden_states[0] - reference["llm_inputs_embeds"])[valid].abs().max() <= 1e-4

    columns = _vocab_columns(layout, reference, base_vocab_size)
    logits = output.logits[..., reference["logits_vocab_ids"][columns]]
    assert (logits - reference["logits_at_vocab_ids"][..., columns])[valid].abs().max() <= 1e-3
    assert torch.equal(output.logits.argmax(-1)[valid], reference["logits_argmax"][valid])
    if layout == "original_checkpoint_full":
        lse = output.logits.logsumexp(-1)
        assert (lse - reference["logits_logsumexp"])[valid].abs().max() <= 1e-3

    shift_logits, shift_labels = output.logits[:, :-1], batch["labels"][:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none"
    )
    per_example = token_loss.sum(1) / (shift_labels != -100).sum(1)
    assert (per_example - reference["per_example_loss"]).abs().max() <= 1e-4
    assert abs(output.loss.item() - reference["loss"].item()) <= 1e-4


def test_generation_prompt_embeddings_match(converted, reference, reference_io):
    """Every `generation_prompt_embeds_<i>` the fixture records (the inference embeddings of sample i)."""
    _, model, processor = converted
    recorded = {int(key.rsplit("_", 1)[1]): value for key, value in reference.items()
                if key.startswith("generation_prompt_embeds_")}
    assert recorded, "the fixture records no generation_prompt_embeds_<i>"
    prompts = _prompts(processor, reference_io)
    for i, expected in recorded.items():
        inputs = processor(text=prompts[i], audio=reference["waveform"][i], sampling_rate=16000)
        with torch.no_grad():
            embeds = model(**inputs, output_hidden_states=True).hidden_states[0][0]
        assert embeds.shape == expected.shape
        assert (embeds - expected).abs().max() <= 1e-4


def _generate(model, inputs, num_tokens: int) -> list[list[int]]:
    output = model.generate(**inputs, max_new_tokens=num_tokens, min_new_tokens=num_tokens, num_beams=1)
    return output[:, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("form", QUERY_FORMS)
@pytest.mark.parametrize("alpha, key", [(1.0, "greedy_token_ids_fp32"), (0.5, "greedy_token_ids_fp32_merging_alpha_0_5")])
def test_greedy_generation_matches_per_clip_and_batched(converted, reference, reference_io, alpha, key, form):
    _, model, processor = converted
    expected = reference_io[key]
    prompts = _prompts(processor, reference_io, form)
    model.set_merging_alpha(alpha)
    try:
        lengths = []
        for i, ids in enumerate(expected):
            single = processor(text=prompts[i], audio=reference["waveform"][i], sampling_rate=16000)
            lengths.append(single["input_ids"].shape[1])
            assert _generate(model, single, len(ids)) == [ids]
        batch = processor(text=prompts, audio=list(reference["waveform"]), sampling_rate=16000)
        width = batch["input_ids"].shape[1]
        assert batch["attention_mask"].tolist() == [[0] * (width - n) + [1] * n for n in lengths], "left padding"
        generated = _generate(model, batch, max(map(len, expected)))
        assert [row[: len(ids)] for row, ids in zip(generated, expected)] == expected
    finally:
        model.set_merging_alpha(1.0)


def test_merging_alpha_half_matches_original_scaling(converted, reference, reference_io, base_vocab_size):
    layout, model, processor = converted
    batch = _training_batch(processor, reference, reference_io)
    valid = batch["attention_mask"].bool()
    columns = _vocab_columns(layout, reference, base_vocab_size)
    ids = reference["logits_vocab_ids"][columns]
    with torch.no_grad():
        before = model(**batch).logits
        model.set_merging_alpha(0.5)
        half = model(**batch).logits
        model.set_merging_alpha(1.0)
        restored = model(**batch).logits
    assert (half[..., ids] - reference["alpha_0_5_logits_at_vocab_ids"][..., columns])[valid].abs().max() <= 1e-3
    assert torch.equal(half.argmax(-1)[valid], reference["alpha_0_5_logits_argmax"][valid])
    assert torch.equal(restored, before)
