# Copyright 2026 The NatureLM-audio HF authors. Licensed under the MIT License.
"""The NatureLM-audio pipeline: long recordings in, one answer per window out.

Travels with checkpoints as remote code (declared under `custom_pipelines`), so it imports only torch, numpy,
transformers and its sibling files; decoding audio files additionally needs `soundfile`, imported when used.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, Pipeline

try:  # as remote code these files form one package; pip-installed they are top-level modules
    from .feature_extraction_naturelm import load_audio_file, to_mono_16k
    from .modeling_naturelm import CACHE_KWARG
    from .processing_naturelm import audio_instruction
except ImportError:
    from feature_extraction_naturelm import load_audio_file, to_mono_16k
    from modeling_naturelm import CACHE_KWARG
    from processing_naturelm import audio_instruction

TASK = "naturelm-audio-text-to-text"
DEFAULT_QUERY = "What is the common name for the focal species in the audio? Answer:"


@dataclass
class AudioWindow:
    """One window of one input: 16 kHz mono samples and where they lie in the recording."""

    input_index: int
    start: float
    end: float
    audio: np.ndarray
    prompt: str


def window_starts(num_samples: int, window: int, hop: int) -> list[int]:
    """Start samples of the windows covering a recording: every `hop` until a window has reached the end, so the last
    partial window is kept (it is zero-padded to the window and reported with its true end)."""
    starts = [0]
    while starts[-1] + window < num_samples and starts[-1] + hop < num_samples:
        starts.append(starts[-1] + hop)
    return starts


def build_prompt(processor, query: str) -> str:
    """The original NatureLM prompt for one clip and a question (which may already hold the audio placeholder)."""
    messages = [{"role": "user", "content": audio_instruction(query)}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class MinNewTokensInPlaceLogitsProcessor(LogitsProcessor):
    """`min_new_tokens` by writing -inf into the few EOS columns in place.

    transformers' `MinLengthLogitsProcessor` and `MinNewTokensLengthLogitsProcessor` (both active for
    `min_new_tokens`) each clone the scores and rebuild an EOS mask over the whole 128k vocabulary at every step,
    which measured a third of a small model's decoding time on CPU. Same result, a few element writes instead.
    """

    def __init__(self, prompt_length: int, min_new_tokens: int, eos_token_id: int | list[int]):
        self.prompt_length = prompt_length
        self.min_new_tokens = min_new_tokens
        self.eos_token_id = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[-1] - self.prompt_length < self.min_new_tokens:
            scores[:, self.eos_token_id] = -float("inf")
        return scores


def generate_answers(model, processor, windows: list[AudioWindow], **generate_kwargs) -> list[str]:
    """Answers for a batch of windows in one `generate` call (left-padded prompts), decoded as generated."""
    batch = processor(
        text=[w.prompt for w in windows], audio=[w.audio for w in windows],
        sampling_rate=processor.feature_extractor.sampling_rate,
    ).to(model.device)
    min_new_tokens = generate_kwargs.pop("min_new_tokens", None)
    eos_token_id = generate_kwargs.get("eos_token_id", model.generation_config.eos_token_id)
    if min_new_tokens and eos_token_id is not None:
        generate_kwargs["logits_processor"] = LogitsProcessorList(
            [*generate_kwargs.get("logits_processor", []),
             MinNewTokensInPlaceLogitsProcessor(batch["input_ids"].shape[1], min_new_tokens, eos_token_id)]
        )
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
        text=[w.prompt for w in windows], audio=[w.audio for w in windows],
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


class NatureLMPipeline(Pipeline):
    """Answers a question about every window of one or many recordings, in batches.

    ```python
    >>> from transformers import pipeline
    >>> pipe = pipeline("naturelm-audio-text-to-text", model="path/to/converted", trust_remote_code=True)
    >>> pipe("dawn_chorus.flac", query="What is the common name for the focal species in the audio? Answer:")
    {'file': 'dawn_chorus.flac', 'windows': [{'start': 0.0, 'end': 10.0, 'text': 'American Robin'}, ...]}
    ```

    Inputs: a path, a 1-D/2-D array or tensor with `sampling_rate`, a `{"array"|"raw": ..., "sampling_rate": ...}`
    dict, or a list of those. `query` is one string or one per input. Windows are `window_seconds` long every
    `hop_seconds` (default: the window); the last partial window is kept and reported with its true end. All
    windows of all inputs go through the encoder and `generate` together, `batch_size` at a time. With
    `candidate_labels`, each window instead gets probabilities over those labels (`labels`/`scores`, best first).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False

    def _sanitize_parameters(self, **kwargs):
        return {}, {}, {}

    def __call__(
        self,
        inputs,
        query: str | list[str] = DEFAULT_QUERY,
        sampling_rate: int | None = None,
        window_seconds: float = 10.0,
        hop_seconds: float | None = None,
        batch_size: int = 8,
        candidate_labels: list[str] | None = None,
        **generate_kwargs,
    ):
        single = not isinstance(inputs, (list, tuple))
        inputs = [inputs] if single else list(inputs)
        queries = [query] * len(inputs) if isinstance(query, str) else list(query)
        if len(queries) != len(inputs):
            raise ValueError(f"Got {len(inputs)} inputs but {len(queries)} queries.")
        if candidate_labels is not None and not candidate_labels:
            raise ValueError("`candidate_labels` must hold at least one label.")
        windows = [
            w
            for index, (item, q) in enumerate(zip(inputs, queries))
            for w in self.preprocess(item, index=index, query=q, sampling_rate=sampling_rate,
                                     window_seconds=window_seconds, hop_seconds=hop_seconds)
        ]
        outputs = []
        for first in range(0, len(windows), batch_size):
            outputs += self._forward(windows[first : first + batch_size], candidate_labels, **generate_kwargs)
        results = [self.postprocess(item, [o for o in outputs if o["input_index"] == i]) for i, item in
                   enumerate(inputs)]
        return results[0] if single else results

    def preprocess(self, item, index: int = 0, query: str = DEFAULT_QUERY, sampling_rate: int | None = None,
                   window_seconds: float = 10.0, hop_seconds: float | None = None) -> list[AudioWindow]:
        rate = self.processor.feature_extractor.sampling_rate
        if isinstance(item, (str, Path)):
            audio = load_audio_file(item, rate)
        elif isinstance(item, dict):
            array = item.get("array", item.get("raw"))
            audio = to_mono_16k(array, item.get("sampling_rate", sampling_rate), rate, name=f"input {index}")
        else:
            audio = to_mono_16k(item, sampling_rate, rate, name=f"input {index}")
        window = round(window_seconds * rate)
        hop = round((hop_seconds or window_seconds) * rate)
        if window <= 0 or hop <= 0:
            raise ValueError(f"window_seconds ({window_seconds}) and hop_seconds ({hop_seconds}) must be positive.")
        prompt = build_prompt(self.processor, query)
        return [
            AudioWindow(index, s / rate, min(s + window, len(audio)) / rate, audio[s : s + window], prompt)
            for s in window_starts(len(audio), window, hop)
        ]

    def _forward(self, windows: list[AudioWindow], candidate_labels: list[str] | None = None,
                 **generate_kwargs) -> list[dict]:
        if candidate_labels is not None:
            probabilities = score_candidate_labels(self.model, self.processor, windows, candidate_labels).cpu()
            return [
                {"input_index": w.input_index, "start": w.start, "end": w.end,
                 **rank_labels(candidate_labels, p.tolist())}
                for w, p in zip(windows, probabilities)
            ]
        texts = generate_answers(self.model, self.processor, windows, **generate_kwargs)
        return [{"input_index": w.input_index, "start": w.start, "end": w.end, "text": t.strip()}
                for w, t in zip(windows, texts)]

    def postprocess(self, item, outputs: list[dict]) -> dict:
        windows = [{k: v for k, v in o.items() if k != "input_index"} for o in outputs]
        return {"file": str(item) if isinstance(item, (str, Path)) else None, "windows": windows}


def rank_labels(labels: list[str], probabilities: list[float]) -> dict:
    """Labels and scores, best first (ties keep the given order)."""
    order = sorted(range(len(labels)), key=lambda i: (-probabilities[i], i))
    return {"labels": [labels[i] for i in order], "scores": [probabilities[i] for i in order]}


__all__ = ["NatureLMPipeline", "TASK", "rank_labels"]
