# Copyright 2026 The NatureLM-audio HF authors. Licensed under the MIT License.
"""The NatureLM-audio transformers pipeline and the per-batch model calls it shares with the `naturelm` engine.

`NatureLMPipeline` is a `ChunkPipeline`, as transformers' speech-recognition pipeline is: `preprocess` yields a long
recording's windows, transformers batches them (`batch_size`, across recordings) and `postprocess` gathers each
recording's rows. The model calls (`generate_answers`, `score_candidate_labels`, `embed_windows`) live here, once:
the pipeline needs them and the package's threaded engine (`naturelm.engine`) imports them.

Travels with checkpoints as remote code (declared under `custom_pipelines` and copied by the model's `save_pretrained`
through `modeling_naturelm.save_pipeline_code`), so it imports only torch, numpy, transformers and its sibling files.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers.pipelines.base import ChunkPipeline

try:  # as remote code these files form one package; pip-installed they are top-level modules
    from .audio_naturelm import AudioError, array_windows, stream_windows, to_mono
    from .modeling_naturelm import CACHE_KWARG, PIPELINE_TASK
    from .processing_naturelm import audio_instruction
except ImportError:
    from audio_naturelm import AudioError, array_windows, stream_windows, to_mono
    from modeling_naturelm import CACHE_KWARG, PIPELINE_TASK
    from processing_naturelm import audio_instruction

TASK = PIPELINE_TASK
DEFAULT_QUERY = "What is the common name for the focal species in the audio? Answer:"


@dataclass
class AudioWindow:
    """One window of a recording: 16 kHz mono samples, where they lie in the recording, and the prompt to ask. A
    prompt with several `<AudioHere>` placeholders (a chat turn about several clips) takes a list of clips, in
    placeholder order."""

    start: float
    end: float
    audio: np.ndarray | list[np.ndarray]
    prompt: str = ""


def window_clips(windows: list[AudioWindow]) -> list[np.ndarray]:
    """Every clip of a batch in placeholder order across its prompts, as the processor takes them."""
    return [clip for w in windows for clip in (w.audio if isinstance(w.audio, list) else [w.audio])]


def build_prompt(processor, query: str) -> str:
    """The original NatureLM prompt for one clip and a question (which may already hold the audio placeholder)."""
    messages = [{"role": "user", "content": audio_instruction(query)}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def generate_answers(model, processor, windows: list[AudioWindow], **generate_kwargs) -> list[str]:
    """Answers for a batch of windows in one `generate` call (left-padded prompts), decoded as generated."""
    batch = processor(
        text=[w.prompt for w in windows], audio=window_clips(windows),
        sampling_rate=processor.feature_extractor.sampling_rate,
    ).to(model.device)
    output = model.generate(**batch, **generate_kwargs)
    return processor.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def score_candidate_labels(model, processor, windows: list[AudioWindow], labels: list[str]) -> torch.Tensor:
    """Probabilities over `labels` for each window, shape `(windows, labels)`.

    A label's score is the log-likelihood of it being the whole answer: the sum of the log-probabilities of its
    tokens and of the closing `<|end_of_text|>`. The prompt (with audio) runs once per window; its KV cache is then
    shared by every label, whose tokens all go through a single forward pass.
    """
    tokenizer = processor.tokenizer
    label_ids = [tokenizer(label + processor.answer_suffix, add_special_tokens=False).input_ids for label in labels]
    length = max(len(ids) for ids in label_ids)
    tokens = torch.full((len(labels), length), tokenizer.pad_token_id, dtype=torch.long)
    token_mask = torch.zeros((len(labels), length), dtype=torch.long)
    for row, ids in enumerate(label_ids):
        tokens[row, : len(ids)] = torch.tensor(ids)
        token_mask[row, : len(ids)] = 1

    prefix = processor(
        text=[w.prompt for w in windows], audio=window_clips(windows),
        sampling_rate=processor.feature_extractor.sampling_rate,
    ).to(model.device)
    positions = (prefix["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    out = model(**prefix, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = out.logits[:, -1].float().log_softmax(-1)[:, tokens[:, 0].to(model.device)]  # (windows, labels)

    num_windows, num_labels = len(windows), len(labels)
    cache = out[CACHE_KWARG]
    cache.batch_repeat_interleave(num_labels)
    tokens, token_mask = tokens.to(model.device), token_mask.to(model.device)
    attention_mask = torch.cat(
        [prefix["attention_mask"].repeat_interleave(num_labels, 0), token_mask.repeat(num_windows, 1)], dim=1
    )
    next_positions = positions[:, -1:].repeat_interleave(num_labels, 0) + 1 + torch.arange(length, device=model.device)
    hidden = model.model(
        input_ids=tokens.repeat(num_windows, 1), attention_mask=attention_mask, position_ids=next_positions,
        use_cache=False, **{CACHE_KWARG: cache},
    ).last_hidden_state[:, :-1]
    targets = tokens[:, 1:].repeat(num_windows, 1)
    rest = torch.empty(targets.shape, device=model.device)
    for chunk in torch.split(torch.arange(hidden.shape[0], device=model.device), 64):  # bounded logits memory
        logits = model.lm_head(hidden[chunk]).float()
        rest[chunk] = logits.gather(-1, targets[chunk, :, None]).squeeze(-1) - logits.logsumexp(-1)
    rest = (rest * token_mask[:, 1:].repeat(num_windows, 1)).sum(-1).view(num_windows, num_labels)
    return (first + rest).softmax(-1)


@torch.no_grad()
def embed_windows(model, processor, windows: list[AudioWindow]) -> tuple[np.ndarray, np.ndarray]:
    """Per-window embeddings: the mean of the LLM-space audio tokens and the mean of the BEATs features."""
    features = processor.feature_extractor(
        [w.audio for w in windows], sampling_rate=processor.feature_extractor.sampling_rate, return_tensors="pt"
    ).input_features.to(model.device)
    output = model.get_audio_features(features)
    return output.pooler_output.float().mean(1).cpu().numpy(), output.last_hidden_state.float().mean(1).cpu().numpy()


def rank_labels(labels: list[str], probabilities: list[float]) -> dict:
    """Labels and scores, best first (ties keep the given order)."""
    order = sorted(range(len(labels)), key=lambda i: (-probabilities[i], i))
    return {"labels": [labels[i] for i in order], "scores": [probabilities[i] for i in order]}


def window_rows(windows: list[AudioWindow], outputs: list[dict]) -> list[dict]:
    """A row per window: its `start` and `end` (s) and the model call's fields."""
    return [{"start": round(w.start, 6), "end": round(w.end, 6), **output} for w, output in zip(windows, outputs)]


class NatureLMPipeline(ChunkPipeline):
    """Answers a question about every window of one or many recordings, in batches.

    ```python
    >>> from transformers import pipeline
    >>> pipe = pipeline("naturelm-audio-text-to-text", model="path/to/converted", trust_remote_code=True,
    ...                 batch_size=8, max_new_tokens=20)
    >>> pipe("dawn_chorus.flac", query="What is the common name for the focal species in the audio? Answer:")
    {'file': 'dawn_chorus.flac', 'windows': [{'start': 0.0, 'end': 10.0, 'text': 'American Robin'}, ...]}
    ```

    Inputs: a path, a 1-D/2-D array or tensor with `sampling_rate`, a `{"array"|"raw"|"path": ..., "sampling_rate":
    ..., "query": ...}` dict, or a list of those. Parameters, given when the pipeline is built or when it is called
    (the call's win): `query` (one string, or one per input), `window_seconds` and `hop_seconds` (default: the
    window; the last partial window is kept and reported with its true end), `candidate_labels` (then each window
    gets probabilities over those labels, `labels`/`scores` best first, instead of a generated `text`), `batch_size`
    (windows per model call, across inputs) and any `generate` argument (`max_new_tokens`, `num_beams`, ...; the
    others come from the checkpoint's generation config).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _pipeline_calls_generate = True  # transformers keeps construction-time generate arguments for every call

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._batch_size is None:
            self._batch_size = 8

    def _sanitize_parameters(self, query=None, sampling_rate=None, window_seconds=None, hop_seconds=None,
                             candidate_labels=None, strip=None, generate_kwargs=None, **kwargs):
        preprocess = {name: value for name, value in (("query", query), ("sampling_rate", sampling_rate),
                                                      ("window_seconds", window_seconds),
                                                      ("hop_seconds", hop_seconds)) if value is not None}
        forward = {"generate_kwargs": {**(generate_kwargs or {}), **kwargs}}
        if candidate_labels is not None:
            if not candidate_labels:
                raise ValueError("Candidate labels must hold at least one label.")
            forward["candidate_labels"] = list(candidate_labels)
        postprocess = {"strip": strip} if strip is not None else {}
        return preprocess, forward, postprocess

    def __call__(self, inputs, query: str | list[str] | None = None, **kwargs):
        """One query per input (a list) goes with its input; one string or none is a parameter like the others."""
        if isinstance(query, (list, tuple)):
            items = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
            if len(query) != len(items):
                raise ValueError(f"Got {len(items)} inputs but {len(query)} queries.")
            inputs = [{**self._as_dict(item), "query": q} for item, q in zip(items, query)]
        elif query is not None:
            kwargs["query"] = query
        return super().__call__(inputs, **kwargs)

    @staticmethod
    def _as_dict(item) -> dict:
        if isinstance(item, dict):
            return dict(item)
        return {"path": item} if isinstance(item, (str, Path)) else {"array": item}

    def preprocess(self, inputs, query: str = DEFAULT_QUERY, sampling_rate: int | None = None,
                   window_seconds: float = 10.0, hop_seconds: float | None = None) -> Iterator[dict]:
        """Yields the recording's windows, the last one marked `is_last`; a path is read block by block, an array is
        checked, mixed to mono and resampled first."""
        item = self._as_dict(inputs)
        prompt = build_prompt(self.processor, item.get("query", query))
        path = item.get("path")
        try:
            if path is not None:
                windows = stream_windows(path, window_seconds, hop_seconds)
            else:
                samples = item.get("array", item.get("raw"))
                rate = item.get("sampling_rate", sampling_rate)
                samples = to_mono(samples, rate, self.processor.feature_extractor.sampling_rate, name="input")
                windows = array_windows(samples, window_seconds, hop_seconds)
            previous = None
            for start, end, samples in windows:
                if previous is not None:
                    yield {"window": previous, "file": path, "is_last": False}
                previous = AudioWindow(start, end, samples, prompt)
        except AudioError as error:
            raise ValueError(f"{path if path is not None else 'input'} {error}.") from None
        if previous is not None:
            yield {"window": previous, "file": path, "is_last": True}

    def _forward(self, model_inputs: dict, generate_kwargs: dict | None = None,
                 candidate_labels: list[str] | None = None) -> dict:
        """One batch of windows (from any inputs) through the model; transformers forms the batches."""
        batched = isinstance(model_inputs["window"], list)
        windows = model_inputs["window"] if batched else [model_inputs["window"]]
        if candidate_labels is not None:
            probabilities = score_candidate_labels(self.model, self.processor, windows, candidate_labels)
            outputs = [rank_labels(candidate_labels, p) for p in probabilities.cpu().tolist()]
        else:
            texts = generate_answers(self.model, self.processor, windows,
                                     **self._prepare_generate_kwargs(generate_kwargs or {}))
            outputs = [{"text": text} for text in texts]
        rows = window_rows(windows, outputs)
        return {"row": rows if batched else rows[0], "file": model_inputs["file"], "is_last": model_inputs["is_last"]}

    def postprocess(self, model_outputs: list[dict], strip: bool = True) -> dict:
        rows = [output["row"] for output in model_outputs]
        if strip:
            rows = [{**row, "text": row["text"].strip()} if "text" in row else row for row in rows]
        file = model_outputs[0]["file"]
        return {"file": str(file) if file is not None else None, "windows": rows}


__all__ = [
    "DEFAULT_QUERY",
    "TASK",
    "AudioWindow",
    "NatureLMPipeline",
    "build_prompt",
    "embed_windows",
    "generate_answers",
    "rank_labels",
    "score_candidate_labels",
    "window_rows",
    "window_clips",
]
