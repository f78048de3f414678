# Copyright 2026 The NatureLM-audio HF authors. Licensed under the MIT License.
"""Processor for NatureLM-audio: the Llama 3.1 tokenizer, the BEATs feature extractor and the original prompt format."""

import numpy as np
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack

try:  # as remote code these files form one package; pip-installed they are top-level modules
    from .audio_naturelm import read_audio, to_mono
except ImportError:
    from audio_naturelm import read_audio, to_mono

# The audio markers, defined here once and imported by every other module. Users (and BEANS-Zero) write
# AUDIO_PLACEHOLDER where a clip goes; the original prompt wraps it in <Audio>...</Audio> (AUDIO_SPAN, ordinary text for
# the tokenizer); the processor expands each placeholder into AUDIO_TOKEN repeated once per audio feature vector.
AUDIO_PLACEHOLDER = "<AudioHere>"
AUDIO_SPAN = f"<Audio>{AUDIO_PLACEHOLDER}</Audio>"
AUDIO_TOKEN = "<|reserved_special_token_0|>"


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
    f"{{%- if part['type'] == 'audio' -%}}{{{{- '{AUDIO_SPAN}' -}}}}{{%- else -%}}{{{{- part['text'] -}}}}{{%- endif -%}}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}{%- endif -%}"
)


class NatureLMProcessorKwargs(ProcessingKwargs, total=False):
    # Prompts come from the chat template, which writes the BOS itself; batches are left-padded for generation (with
    # `answers`, for training, right-padded unless a padding side is given) and returned as torch tensors.
    _defaults = {
        "text_kwargs": {"padding": True, "padding_side": "left", "add_special_tokens": False},
        "common_kwargs": {"return_tensors": "pt"},
    }


class NatureLMProcessor(ProcessorMixin):
    r"""
    Builds NatureLM-audio inputs: each `<AudioHere>` placeholder in the text becomes as many `audio_token`s as one
    clip yields audio features, the clips become fbank `input_features`, and with `answers` the training labels
    (-100 everywhere but the answer and its closing `<|end_of_text|>`, as the original trained).

    Args:
        feature_extractor ([`NatureLMFeatureExtractor`]): turns waveforms into fbank features.
        tokenizer ([`PreTrainedTokenizerFast`]): the Llama 3.1 tokenizer with the `[PAD]` token added.
        chat_template (`str`, *optional*): defaults to the original NatureLM prompt format.
        audio_token (`str`, defaults to `AUDIO_TOKEN`): the token the model replaces with audio.
        audio_placeholder (`str`, defaults to `AUDIO_PLACEHOLDER`): what users (and BEANS-Zero) write for one clip.
        window_tokens (`int`, defaults to 17), window_stride_tokens (`int`, defaults to 17), num_query_tokens
            (`int`, defaults to 1), patch_size (`int`, defaults to 16): the model's BEATs patches and Q-Former
            windowing, from which the feature extractor derives the number of audio tokens per clip. Build a
            processor that matches a model with [`~NatureLMProcessor.windowing_from_config`].
        answer_suffix (`str`, defaults to `"<|end_of_text|>"`): appended to training answers (the original `end_sym`).
        max_answer_tokens (`int`, defaults to 160): answers are truncated to this many tokens, suffix included
            (the original `max_txt_len`).
    """

    valid_processor_kwargs = NatureLMProcessorKwargs

    def __init__(
        self,
        feature_extractor,
        tokenizer,
        chat_template: str | None = None,
        audio_token: str = AUDIO_TOKEN,
        audio_placeholder: str = AUDIO_PLACEHOLDER,
        window_tokens: int = 17,
        window_stride_tokens: int = 17,
        num_query_tokens: int = 1,
        patch_size: int = 16,
        answer_suffix: str = "<|end_of_text|>",
        max_answer_tokens: int = 160,
    ):
        self.audio_token = audio_token
        self.audio_placeholder = audio_placeholder
        self.window_tokens = window_tokens
        self.window_stride_tokens = window_stride_tokens
        self.num_query_tokens = num_query_tokens
        self.patch_size = patch_size
        self.answer_suffix = answer_suffix
        self.max_answer_tokens = max_answer_tokens
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template or CHAT_TEMPLATE)
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        if self.num_audio_tokens < 1:
            raise ValueError(
                f"Clips of {feature_extractor.max_length_seconds} s are shorter than one Q-Former window of "
                f"{window_tokens} BEATs patches, so they would give no audio token; use longer clips."
            )
        if tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; NatureLM uses '[PAD]' (id 128256).")

    @staticmethod
    def windowing_from_config(config) -> dict[str, int]:
        """The processor arguments that must match a [`NatureLMConfig`]: `NatureLMProcessor(fe, tok,
        **NatureLMProcessor.windowing_from_config(model.config))`."""
        return {
            "window_tokens": config.window_tokens,
            "window_stride_tokens": config.window_stride_tokens,
            "num_query_tokens": config.num_query_tokens,
            "patch_size": config.audio_config.input_patch_size,
        }

    @property
    def num_audio_tokens(self) -> int:
        """LLM tokens per clip; the feature extractor owns the arithmetic."""
        return self.feature_extractor.get_num_audio_tokens(
            self.window_tokens, self.window_stride_tokens, self.num_query_tokens, self.patch_size
        )

    def __call__(
        self,
        text: str | list[str] | None = None,
        audio=None,
        answers: str | list[str] | None = None,
        **kwargs: Unpack[NatureLMProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Args:
            text (`str` or `list[str]`): prompts, usually from `apply_chat_template(..., add_generation_prompt=True)`,
                each holding one `<AudioHere>` per clip it refers to.
            audio (array, tensor or a list of them, *optional*): the clips, in placeholder order across all texts.
            answers (`str` or `list[str]`, *optional*): training targets, one per text; adds `labels`.
            **kwargs: the common processor keywords, merged with the `NatureLMProcessorKwargs` defaults:
                `sampling_rate` (of `audio`; required with audio), `padding` (`True`/`"longest"`, `"max_length"`
                with `max_length`, `pad_to_multiple_of`), `padding_side` (`"left"` by default for generation, `"right"`
                by default with `answers` for training), `return_tensors` (`"pt"` by default, `"np"`, or `None`
                for lists), `add_special_tokens` (`False`: the chat template writes the BOS), or the same grouped
                as `text_kwargs` / `audio_kwargs`. Truncation is refused: it would cut through an audio span.

        Returns:
            [`BatchFeature`] with `input_ids`, `attention_mask`, `input_features` (with audio) and `labels`
            (with answers).
        """
        if text is None:
            raise ValueError("NatureLMProcessor needs `text`: the prompts that place each clip with '<AudioHere>'.")
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
            if not any("padding_side" in group for group in (kwargs, *(kwargs.get(k, {}) for k in _GROUPS))):
                kwargs["text_kwargs"] = {**kwargs.get("text_kwargs", {}), "padding_side": "right"}

        output_kwargs = self._merge_kwargs(
            NatureLMProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        text_kwargs, audio_kwargs = output_kwargs["text_kwargs"], output_kwargs["audio_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None)
        if text_kwargs.pop("truncation", None) not in (None, False, "do_not_truncate"):
            raise ValueError("NatureLMProcessor does not truncate: it would cut through audio spans or answers.")
        side = text_kwargs.pop("padding_side", None) or self.tokenizer.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}.")
        pad_kwargs = {key: text_kwargs.pop(key) for key in _PAD_KEYS if key in text_kwargs}

        # Placeholders are replaced in one pass, so the expansion is never rescanned.
        expansion = self.audio_token * self.num_audio_tokens
        encoded = self.tokenizer([t.replace(self.audio_placeholder, expansion) for t in texts], **text_kwargs)
        rows = {key: [list(row) for row in value] for key, value in encoded.items()}
        label_rows = [[-100] * len(row) for row in rows["input_ids"]]
        if answers is not None:
            for i, answer in enumerate(answers):
                answer_ids = self.tokenizer(answer + self.answer_suffix, add_special_tokens=False).input_ids
                answer_ids = answer_ids[: self.max_answer_tokens]
                rows["input_ids"][i] += answer_ids
                label_rows[i] += answer_ids
                for key in rows.keys() - {"input_ids"}:  # attention mask (1), token type ids (0), ...
                    rows[key][i] += [1 if key == "attention_mask" else 0] * len(answer_ids)

        data = dict(self.tokenizer.pad(rows, **pad_kwargs, padding_side=side))
        if answers is not None:
            length = len(data["input_ids"][0])
            data["labels"] = [
                [-100] * (length - len(r)) + r if side == "left" else r + [-100] * (length - len(r))
                for r in label_rows
            ]
        if clips:
            # every clip is cut or padded to the feature extractor's max_length_seconds: no audio padding options
            data["input_features"] = self.feature_extractor(
                clips, sampling_rate=audio_kwargs.get("sampling_rate")
            ).input_features
        return BatchFeature(data=data, tensor_type=return_tensors)

    # Audio inside chat messages -----------------------------------------------------------------------------------

    def _resolve_audio_loading_params(self, processor_kwargs: dict) -> dict:
        """`apply_chat_template` loads the audio of the messages through `_multimodal_inputs_from_conversations`
        below and then tells `__call__` it is at the returned `sampling_rate`: always the model's rate, since every
        clip is decoded (files) or resampled (arrays) to it. A `sampling_rate` given by the caller is the rate of the
        arrays in the messages (a block's own `"sampling_rate"` wins)."""
        given = processor_kwargs.get("sampling_rate", processor_kwargs.get("audio_kwargs", {}).get("sampling_rate"))
        return {"sampling_rate": self.feature_extractor.sampling_rate, "array_sampling_rate": given}

    def _multimodal_inputs_from_conversations(
        self, conversations: list[list[dict]], audio_loading_params: dict, load_audio_from_video: bool = False
    ) -> tuple[list, list, list, dict]:
        """The audio blocks of the messages, in order, as mono float32 at the model rate: `{"type": "audio", "path":
        file}` decoded with soundfile (transformers' loader would need torchcodec or librosa for some
        formats and resamples differently), `{"type": "audio", "audio": array}` at the block's `"sampling_rate"` or
        the `sampling_rate` passed to `apply_chat_template`. A bare `{"type": "audio"}` places a clip without
        loading one (give the clips with the processor's `audio=` then)."""
        if load_audio_from_video:
            raise ValueError("NatureLM takes no video, so `load_audio_from_video` does not apply.")
        rate = self.feature_extractor.sampling_rate
        clips = []
        for conversation in conversations:
            for message in conversation:
                content = message.get("content")
                if isinstance(content, str) or not content:
                    continue
                for block in content:
                    if block.get("type") in ("image", "video"):
                        raise ValueError(f"NatureLM takes audio and text only, not {block['type']!r} blocks.")
                    if block.get("type") != "audio":
                        continue
                    source = next((block[key] for key in ("audio", "path", "url") if key in block), None)
                    if source is None:
                        continue
                    if isinstance(source, str) and source.startswith(("http://", "https://")):
                        raise ValueError(f"Audio blocks read local files only; download {source} and give its path.")
                    if isinstance(source, str):
                        clips.append(read_audio(source, rate))
                    else:
                        array_rate = block.get("sampling_rate", audio_loading_params["array_sampling_rate"])
                        clips.append(to_mono(source, array_rate, rate, name=f"audio block {len(clips)}"))
        return [[] for _ in conversations], [[] for _ in conversations], clips, {}

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "input_features", "labels"]


_GROUPS = ("text_kwargs", "audio_kwargs", "common_kwargs")
_PAD_KEYS = ("padding", "max_length", "pad_to_multiple_of", "return_attention_mask")

# Saved with its code file and an `auto_map`, so a saved folder loads with the Auto classes and `trust_remote_code`
# wherever it goes (transformers registers remote classes so when it loads them; this covers the installed modules).
NatureLMProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "AUDIO_PLACEHOLDER",
    "AUDIO_SPAN",
    "AUDIO_TOKEN",
    "CHAT_TEMPLATE",
    "NatureLMProcessor",
    "NatureLMProcessorKwargs",
    "audio_instruction",
]
