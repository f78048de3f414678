# Copyright 2026 The NatureLM-audio HF authors. Licensed under the MIT License.
"""Processor for NatureLM-audio: the Llama 3.1 tokenizer, the BEATs feature extractor and the original prompt format."""

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

AUDIO_PLACEHOLDER = "<AudioHere>"
AUDIO_SPAN = "<Audio><AudioHere></Audio>"


def audio_instruction(query: str) -> str:
    """The user turn about one clip, by the original's rule: a query that already holds `<AudioHere>` keeps the audio
    where it stands; any other gets `<Audio><AudioHere></Audio> ` in front. Stripped, as the original strips it."""
    if AUDIO_PLACEHOLDER not in query:
        query = f"{AUDIO_SPAN} {query}"
    return query.strip()


# Renders exactly the original NatureLM prompt: "<Audio><AudioHere></Audio> {query}" inside a Llama 3.1 user turn.
# A message's content is either a string (e.g. a BEANS-Zero instruction that already holds the placeholder) or a
# list of {"type": "audio"} / {"type": "text", "text": ...} parts joined by single spaces.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if not loop.first -%}{{- ' ' -}}{%- endif -%}"
    "{%- if part['type'] == 'audio' -%}{{- '<Audio><AudioHere></Audio>' -}}{%- else -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}"
)


class NatureLMProcessor(ProcessorMixin):
    r"""
    Builds NatureLM-audio inputs: each `<AudioHere>` placeholder in the text becomes as many `audio_token`s as one
    clip yields audio features, the clips become fbank `input_features`, and with `answers` the training labels
    (-100 everywhere but the answer and its closing `<|end_of_text|>`, as the original trained).

    Args:
        feature_extractor ([`NatureLMFeatureExtractor`]): turns waveforms into fbank features.
        tokenizer ([`PreTrainedTokenizerFast`]): the Llama 3.1 tokenizer with the `[PAD]` token added.
        chat_template (`str`, *optional*): defaults to the original NatureLM prompt format.
        audio_token (`str`, defaults to `"<|reserved_special_token_0|>"`): the token the model replaces with audio.
        audio_placeholder (`str`, defaults to `"<AudioHere>"`): what users (and BEANS-Zero) write for one clip.
        window_tokens (`int`, defaults to 17), window_stride_tokens (`int`, defaults to 17), num_query_tokens
            (`int`, defaults to 1): the model's Q-Former windowing, from which the feature extractor derives the
            number of audio tokens per clip.
        answer_suffix (`str`, defaults to `"<|end_of_text|>"`): appended to training answers (the original `end_sym`).
        max_answer_tokens (`int`, defaults to 160): answers are truncated to this many tokens, suffix included
            (the original `max_txt_len`).
    """

    def __init__(
        self,
        feature_extractor,
        tokenizer,
        chat_template: str | None = None,
        audio_token: str = "<|reserved_special_token_0|>",
        audio_placeholder: str = "<AudioHere>",
        window_tokens: int = 17,
        window_stride_tokens: int = 17,
        num_query_tokens: int = 1,
        answer_suffix: str = "<|end_of_text|>",
        max_answer_tokens: int = 160,
    ):
        self.audio_token = audio_token
        self.audio_placeholder = audio_placeholder
        self.window_tokens = window_tokens
        self.window_stride_tokens = window_stride_tokens
        self.num_query_tokens = num_query_tokens
        self.answer_suffix = answer_suffix
        self.max_answer_tokens = max_answer_tokens
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        if tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; NatureLM uses '[PAD]' (id 128256).")

    @property
    def num_audio_tokens(self) -> int:
        """LLM tokens per clip; the feature extractor owns the arithmetic."""
        return self.feature_extractor.get_num_audio_tokens(
            self.window_tokens, self.window_stride_tokens, self.num_query_tokens
        )

    def __call__(
        self,
        text: str | list[str],
        audio=None,
        sampling_rate: int | None = None,
        answers: str | list[str] | None = None,
        padding_side: str | None = None,
    ) -> BatchFeature:
        r"""
        Args:
            text (`str` or `list[str]`): prompts, usually from `apply_chat_template(..., add_generation_prompt=True)`,
                each holding one `<AudioHere>` per clip it refers to.
            audio (array, tensor or a list of them, *optional*): the clips, in placeholder order across all texts.
            sampling_rate (`int`, *optional*): sample rate of `audio`; required with audio.
            answers (`str` or `list[str]`, *optional*): training targets, one per text; adds `labels`.
            padding_side (`str`, *optional*): `"left"` for generation (default without answers), `"right"` for
                training (default with answers).

        Returns:
            [`BatchFeature`] of torch tensors with `input_ids`, `attention_mask`, `input_features` (with audio) and `labels`
            (with answers).
        """
        texts = [text] if isinstance(text, str) else list(text)
        if audio is None:
            clips = []
        elif isinstance(audio, (list, tuple)):
            clips = list(audio)
        else:
            clips = [audio]
        placeholders = [t.count(self.audio_placeholder) for t in texts]
        if sum(placeholders) != len(clips):
            raise ValueError(
                f"Got {len(texts)} texts with {sum(placeholders)} '{self.audio_placeholder}' placeholders "
                f"(per text: {placeholders}) but {len(clips)} audios; give one audio per placeholder."
            )
        if any(self.audio_token in t for t in texts):
            raise ValueError(f"Texts must mark audio with '{self.audio_placeholder}', not the raw '{self.audio_token}'.")
        if answers is not None:
            answers = [answers] if isinstance(answers, str) else list(answers)
            if len(answers) != len(texts):
                raise ValueError(f"Got {len(texts)} texts but {len(answers)} answers.")

        expansion = self.audio_token * self.num_audio_tokens
        rows, label_rows = [], []
        for i, prompt in enumerate(texts):
            ids = self.tokenizer(prompt.replace(self.audio_placeholder, expansion), add_special_tokens=False).input_ids
            labels = [-100] * len(ids)
            if answers is not None:
                answer_ids = self.tokenizer(answers[i] + self.answer_suffix, add_special_tokens=False).input_ids
                answer_ids = answer_ids[: self.max_answer_tokens]
                ids, labels = ids + answer_ids, labels + answer_ids
            rows.append(ids)
            label_rows.append(labels)

        side = padding_side or ("right" if answers is not None else "left")
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
        length = max(len(r) for r in rows)

        def pad(row: list[int], value: int) -> list[int]:
            filler = [value] * (length - len(row))
            return filler + row if side == "left" else row + filler

        data = {
            "input_ids": torch.tensor([pad(r, self.tokenizer.pad_token_id) for r in rows], dtype=torch.long),
            "attention_mask": torch.tensor([pad([1] * len(r), 0) for r in rows], dtype=torch.long),
        }
        if answers is not None:
            data["labels"] = torch.tensor([pad(r, -100) for r in label_rows], dtype=torch.long)
        if clips:
            data["input_features"] = self.feature_extractor(
                clips, sampling_rate=sampling_rate, return_tensors="pt"
            ).input_features
        return BatchFeature(data=data)

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "input_features", "labels"]


__all__ = ["AUDIO_PLACEHOLDER", "AUDIO_SPAN", "NatureLMProcessor", "audio_instruction"]
