"""The processor: prompt format, placeholder expansion, labels and padding, with the real Llama 3 tokenizer."""

import numpy as np
import pytest
import torch

from naturelm import NatureLMFeatureExtractor, NatureLMProcessor
from naturelm.testing_utils import llama3_tokenizer

CLIP = np.random.default_rng(0).uniform(-0.5, 0.5, 16000).astype(np.float32)


@pytest.fixture(scope="module")
def processor(tokenizer_dir) -> NatureLMProcessor:
    return NatureLMProcessor(NatureLMFeatureExtractor(), llama3_tokenizer(tokenizer_dir))


def _prompt(processor, query: str, num_audios: int = 1) -> str:
    content = [{"type": "audio"}] * num_audios + [{"type": "text", "text": query}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


def test_chat_template_formats(processor):
    prompt = _prompt(processor, "Caption the audio.")
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<Audio><AudioHere></Audio> Caption the audio."
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # A BEANS-Zero style instruction that already carries the placeholder is used verbatim.
    instruction = "<Audio><AudioHere></Audio> Which species? Answer:"
    rendered = processor.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True,
                                             tokenize=False)
    assert instruction in rendered and rendered.count("<AudioHere>") == 1
    # Follow-up questions: earlier turns are kept.
    chat = [
        {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Which species?"}]},
        {"role": "assistant", "content": "American Robin"},
        {"role": "user", "content": "Is it singing?"},
    ]
    rendered = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert "American Robin<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nIs it singing?<|eot_id|>" in rendered


def test_placeholders_expand_to_audio_tokens(processor):
    batch = processor(text=_prompt(processor, "Compare.", num_audios=2), audio=[CLIP, CLIP], sampling_rate=16000)
    audio_id = processor.audio_token_id
    assert (batch["input_ids"] == audio_id).sum() == 2 * processor.num_audio_tokens
    assert batch["input_features"].shape[0] == 2
    tokens = processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens.count("<Audio>") == 0  # "<Audio>" is ordinary text split into BPE pieces, kept as in the original
    text = processor.decode(batch["input_ids"][0][batch["input_ids"][0] != audio_id])
    assert text.count("<Audio></Audio>") == 2


def test_labels_cover_only_the_answer_and_end_of_text(processor):
    prompts = [_prompt(processor, "Which species?"), _prompt(processor, "Caption the audio, please, in detail.")]
    answers = ["Green Treefrog", "Birds sing."]
    batch = processor(text=prompts, audio=[CLIP, CLIP], sampling_rate=16000, answers=answers)
    end_of_text = processor.tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    for row, answer in enumerate(answers):
        labels = batch["labels"][row]
        answer_ids = processor.tokenizer(answer, add_special_tokens=False).input_ids + [end_of_text]
        assert labels[labels != -100].tolist() == answer_ids
        length = int(batch["attention_mask"][row].sum())
        assert batch["attention_mask"][row, :length].all(), "training batches are right-padded"
        assert batch["input_ids"][row, length - len(answer_ids):length].tolist() == answer_ids
        assert (batch["input_ids"][row, length:] == processor.tokenizer.pad_token_id).all()


def test_generation_batches_are_left_padded(processor):
    prompts = [_prompt(processor, "Hi"), _prompt(processor, "A much longer question about the recording?")]
    batch = processor(text=prompts, audio=[CLIP, CLIP], sampling_rate=16000)
    assert "labels" not in batch
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][0, 0]
    right = processor(text=prompts, audio=[CLIP, CLIP], sampling_rate=16000, padding_side="right")
    assert right["attention_mask"][:, 0].all()


def test_answers_are_truncated_like_the_original(tokenizer_dir):
    processor = NatureLMProcessor(NatureLMFeatureExtractor(), llama3_tokenizer(tokenizer_dir), max_answer_tokens=4)
    batch = processor(text=_prompt(processor, "Q"), audio=CLIP, sampling_rate=16000, answers="one two three four five")
    assert (batch["labels"] != -100).sum() == 4


@pytest.mark.parametrize(
    "texts, audios, message",
    [
        (["<AudioHere> a", "b"], 2, r"2 audios"),
        (["<AudioHere> a <AudioHere>"], 1, r"2 '<AudioHere>' placeholders"),
        (["no placeholder"], 1, r"0 '<AudioHere>' placeholders"),
        (["<AudioHere>"], 0, r"0 audios"),
        (["<|reserved_special_token_0|> <AudioHere>"], 1, r"not the raw"),
    ],
)
def test_placeholder_errors(processor, texts, audios, message):
    with pytest.raises(ValueError, match=message):
        processor(text=texts, audio=[CLIP] * audios or None, sampling_rate=16000)


def test_answers_must_match_texts(processor):
    with pytest.raises(ValueError, match="2 texts but 1 answers"):
        processor(text=["<AudioHere>", "<AudioHere>"], audio=[CLIP, CLIP], sampling_rate=16000, answers=["x"])


def test_multichannel_and_resampled_audio(processor):
    stereo = np.stack([CLIP, CLIP])
    mono = processor(text="<AudioHere>", audio=CLIP, sampling_rate=16000)["input_features"]
    assert torch.allclose(processor(text="<AudioHere>", audio=stereo, sampling_rate=16000)["input_features"], mono)
    at_44k = processor(text="<AudioHere>", audio=np.zeros(44100, np.float32), sampling_rate=44100)
    assert at_44k["input_features"].shape == mono.shape


def test_save_and_load_keeps_settings(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = NatureLMProcessor.from_pretrained(tmp_path)
    assert loaded.num_audio_tokens == processor.num_audio_tokens
    assert loaded.audio_token_id == processor.audio_token_id
    assert loaded.chat_template == processor.chat_template
    assert len(loaded.tokenizer) == len(processor.tokenizer)


# Contract checks transformers runs for every processor --------------------------------------------------------------


@pytest.mark.parametrize("return_tensors, kind", [("pt", torch.Tensor), ("np", np.ndarray), (None, list)])
def test_return_tensors(processor, return_tensors, kind):
    batch = processor(text=["<AudioHere> a", "<AudioHere> b c d"], audio=[CLIP, CLIP], sampling_rate=16000,
                      answers=["x", "y"], return_tensors=return_tensors)
    assert isinstance(batch["input_ids"], kind) and isinstance(batch["labels"], kind)
    assert isinstance(batch["attention_mask"], kind)
    default = processor(text=["<AudioHere> a", "<AudioHere> b c d"], audio=[CLIP, CLIP], sampling_rate=16000,
                        answers=["x", "y"])
    assert np.array_equal(np.asarray(batch["input_ids"]), default["input_ids"].numpy())
    assert np.array_equal(np.asarray(batch["labels"]), default["labels"].numpy())


def test_common_padding_kwargs(processor):
    prompts = [_prompt(processor, "Hi"), _prompt(processor, "A longer question about it?")]
    longest = processor(text=prompts, audio=[CLIP, CLIP], sampling_rate=16000)
    width = longest["input_ids"].shape[1]
    fixed = processor(text=prompts, audio=[CLIP, CLIP], sampling_rate=16000, padding="max_length",
                      max_length=width + 5)
    assert fixed["input_ids"].shape[1] == width + 5
    assert torch.equal(fixed["input_ids"][:, 5:], longest["input_ids"])  # left padding by default
    assert (fixed["input_ids"][:, :5] == processor.tokenizer.pad_token_id).all() and not fixed["attention_mask"][:, :5].any()
    multiple = processor(text=prompts, audio=[CLIP, CLIP], sampling_rate=16000, pad_to_multiple_of=64)
    assert multiple["input_ids"].shape[1] % 64 == 0
    # grouped as transformers' processors accept them, and padding_side beside them
    grouped = processor(text=prompts, audio=[CLIP, CLIP], text_kwargs={"padding_side": "right"},
                        audio_kwargs={"sampling_rate": 16000})
    assert grouped["attention_mask"][:, 0].all() and not grouped["attention_mask"][0, -1]
    assert torch.equal(grouped["input_features"], longest["input_features"])
    with pytest.raises(ValueError, match="does not truncate"):
        processor(text=prompts, audio=[CLIP, CLIP], sampling_rate=16000, truncation=True, max_length=8)


def test_labels_follow_an_explicit_padding_side(processor):
    prompts = [_prompt(processor, "Which species?"), _prompt(processor, "Caption the audio, please, in detail.")]
    answers = ["Green Treefrog", "Birds sing."]
    right = processor(text=prompts, audio=[CLIP, CLIP], sampling_rate=16000, answers=answers)
    left = processor(text=prompts, audio=[CLIP, CLIP], sampling_rate=16000, answers=answers, padding_side="left")
    assert left["attention_mask"][:, -1].all() and not right["attention_mask"][:, -1].all()
    for row in range(2):
        keep_left, keep_right = left["attention_mask"][row].bool(), right["attention_mask"][row].bool()
        assert torch.equal(left["input_ids"][row][keep_left], right["input_ids"][row][keep_right])
        assert torch.equal(left["labels"][row][keep_left], right["labels"][row][keep_right])
        assert (left["labels"][row][~keep_left] == -100).all()


def test_chat_template_with_tokenize_loads_the_audio_of_the_messages(processor, audio_dir):
    from audio_naturelm import read_audio

    path = sorted(p for p in audio_dir.iterdir() if p.suffix in (".wav", ".mp3", ".flac"))[0]
    query = "Which species?"
    messages = [{"role": "user", "content": [{"type": "audio", "path": str(path)}, {"type": "text", "text": query}]}]
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors="pt")
    rate = processor.feature_extractor.sampling_rate
    expected = processor(text=_prompt(processor, query), audio=read_audio(path, rate), sampling_rate=rate)
    assert out.keys() == expected.keys() == {"input_ids", "attention_mask", "input_features"}
    for key in expected:
        assert torch.equal(out[key], expected[key]), key
    ids = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_tensors="pt")
    assert torch.equal(ids, expected["input_ids"])  # return_dict=False: the token ids only

    # an array with its rate, in the block or given to apply_chat_template
    clip_44k = np.random.default_rng(1).uniform(-0.5, 0.5, 44100).astype(np.float32)
    expected = processor(text=_prompt(processor, query), audio=clip_44k, sampling_rate=44100)
    in_block = [{"role": "user", "content": [{"type": "audio", "audio": clip_44k, "sampling_rate": 44100},
                                             {"type": "text", "text": query}]}]
    as_kwarg = [{"role": "user", "content": [{"type": "audio", "audio": clip_44k}, {"type": "text", "text": query}]}]
    for messages, kwargs in ((in_block, {}), (as_kwarg, {"processor_kwargs": {"sampling_rate": 44100}})):
        out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                            **kwargs)
        assert torch.equal(out["input_ids"], expected["input_ids"])
        assert torch.allclose(out["input_features"], expected["input_features"], atol=1e-5)
    with pytest.raises(ValueError, match=r"sampling[ _]rate"):
        processor.apply_chat_template(as_kwarg, add_generation_prompt=True, tokenize=True, return_dict=True)


def test_chat_template_places_audio_by_the_audio_instruction_rule(processor):
    from processing_naturelm import AUDIO_PLACEHOLDER, AUDIO_SPAN, audio_instruction

    for query in ("Caption the audio.", f"Listen: {AUDIO_SPAN} Which species?", f"{AUDIO_PLACEHOLDER} then?"):
        as_parts = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": query}]}],
            add_generation_prompt=True, tokenize=False,
        )
        as_string = processor.apply_chat_template(
            [{"role": "user", "content": audio_instruction(query)}], add_generation_prompt=True, tokenize=False
        )
        if AUDIO_PLACEHOLDER in query:  # kept where it stands, nothing put in front
            assert audio_instruction(query) == query.strip() and as_string.count(AUDIO_PLACEHOLDER) == 1
        else:
            assert as_parts == as_string and audio_instruction(query) == f"{AUDIO_SPAN} {query}"
    assert AUDIO_SPAN in processor.chat_template and processor.audio_placeholder == AUDIO_PLACEHOLDER


def test_chat_template_ships_as_jinja(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == processor.chat_template
    assert NatureLMProcessor.from_pretrained(tmp_path).chat_template == processor.chat_template
