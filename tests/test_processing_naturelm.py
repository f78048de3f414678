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
