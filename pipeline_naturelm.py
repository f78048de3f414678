# Copyright 2026 The NatureLM-audio HF authors. Licensed under the MIT License.
"""The NatureLM-audio inference engine and its transformers pipeline: recordings in, one result per window out.

`run_recordings` is the one place where windows meet the model: it reads the recordings ahead in a background thread
(through `audio_naturelm`, the one audio path), batches their windows across recordings, runs each batch through a
task (generation, candidate-label scoring or embeddings) and hands back every recording's rows, in order, as soon as
its last window is done. The pipeline, `naturelm infer` / `embed`, the Space and BEANS-Zero evaluation all use it.

Travels with checkpoints as remote code (declared under `custom_pipelines`), so it imports only torch, numpy,
transformers and its sibling files.
"""

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, Pipeline

try:  # as remote code these files form one package; pip-installed they are top-level modules
    from .audio_naturelm import AudioError, array_windows, stream_windows, to_mono
    from .modeling_naturelm import CACHE_KWARG
    from .processing_naturelm import audio_instruction
except ImportError:
    from audio_naturelm import AudioError, array_windows, stream_windows, to_mono
    from modeling_naturelm import CACHE_KWARG
    from processing_naturelm import audio_instruction

TASK = "naturelm-audio-text-to-text"
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
        text=[w.prompt for w in windows], audio=window_clips(windows),
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


# Tasks: what a batch of windows is run through. Each maps (model, processor, windows) to one result dict per window.
Task = Callable[..., list[dict]]


def _generation(model, processor, windows: list[AudioWindow], strip: bool = True, **generate_kwargs) -> list[dict]:
    texts = generate_answers(model, processor, windows, **generate_kwargs)
    return [{"text": text.strip() if strip else text} for text in texts]


def _label_scores(model, processor, windows: list[AudioWindow], labels: list[str]) -> list[dict]:
    probabilities = score_candidate_labels(model, processor, windows, labels).cpu().tolist()
    return [rank_labels(labels, p) for p in probabilities]


def _embeddings(model, processor, windows: list[AudioWindow]) -> list[dict]:
    llm, beats = embed_windows(model, processor, windows)
    return [{"llm_embedding": a, "beats_embedding": b} for a, b in zip(llm, beats)]


def generation_task(strip: bool = True, **generate_kwargs) -> Task:
    """Answers generated for each window (`{"text"}`), decoded without special tokens (and stripped)."""
    return partial(_generation, strip=strip, **generate_kwargs)


def label_task(labels: list[str]) -> Task:
    """Probabilities over `labels` for each window (`{"labels", "scores"}`, best first)."""
    if not labels:
        raise ValueError("Candidate labels must hold at least one label.")
    return partial(_label_scores, labels=list(labels))


def embedding_task() -> Task:
    """Per-window embeddings (`{"llm_embedding", "beats_embedding"}`)."""
    return _embeddings


@dataclass
class Recording:
    """One input of a run: its name, a function that yields its `(start s, end s, 16 kHz samples)` windows (called
    once, in the reading thread), and the prompt its windows are asked."""

    key: str
    windows: Callable[[], Iterable[tuple[float, float, np.ndarray]]]
    prompt: str = ""

    @classmethod
    def from_file(cls, path: str | Path, window_seconds: float = 10.0, hop_seconds: float | None = None,
                  prompt: str = "") -> "Recording":
        return cls(str(path), partial(stream_windows, path, window_seconds, hop_seconds), prompt)

    @classmethod
    def from_array(cls, key: str, samples: np.ndarray, window_seconds: float = 10.0,
                   hop_seconds: float | None = None, prompt: str = "") -> "Recording":
        """`samples`: mono float32 at 16 kHz (see `audio_naturelm.to_mono`)."""
        return cls(key, partial(array_windows, samples, window_seconds, hop_seconds), prompt)


@dataclass
class RecordingResult:
    """A finished recording: its position in the input, its rows (`start`, `end` and the task's fields, one per
    window, in order) or, for a recording that could not be read, the reason."""

    index: int
    key: str
    rows: list[dict] = field(default_factory=list)
    error: str | None = None


def read_windows(recording: Recording) -> Iterator[AudioWindow | str]:
    """Decodes a recording into its windows; a recording that cannot be read ends with the reason, as a string (the
    windows before it are then to be dropped). Whatever a broken file raises, it must not end the run."""
    try:
        for start, end, samples in recording.windows():
            yield AudioWindow(start, end, samples, recording.prompt)
    except AudioError as reason:
        yield str(reason)
    except Exception as reason:
        yield f"cannot be read ({type(reason).__name__}: {reason})"


def answer_windows(model, processor, task: Task, windows: list[AudioWindow]) -> list[dict]:
    """One batch of windows through `task`: a row per window, its `start` and `end` (s) and the task's fields."""
    with torch.inference_mode():
        outputs = task(model, processor, windows)
    return [{"start": round(w.start, 6), "end": round(w.end, 6), **output} for w, output in zip(windows, outputs)]


_DONE = object()


def _read_ahead(recordings: Iterable[Recording], out: queue.Queue, stop: threading.Event) -> None:
    """The reading thread: decodes every recording in order and queues its windows, then how it ended."""

    def put(item) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    for index, recording in enumerate(recordings):
        error = None
        for item in read_windows(recording):
            if isinstance(item, str):
                error = item
                break
            put((index, recording, item))
            if stop.is_set():
                return
        put((index, recording, error))
    put(_DONE)


def run_recordings(
    model,
    processor,
    recordings: Iterable[Recording],
    task: Task,
    batch_size: int = 8,
    read_ahead: int = 2,
    on_batch: Callable[[list[AudioWindow]], None] | None = None,
) -> Iterator[RecordingResult]:
    """
    Runs every window of every recording through `task`, `batch_size` windows at a time across recording
    boundaries, and yields each recording's [`RecordingResult`] in input order once all its windows are done.

    Args:
        model, processor: the model (eval mode, on its device) and its processor.
        recordings (`Iterable[Recording]`): the inputs, read lazily in a background thread.
        task (`Task`): `generation_task(...)`, `label_task(labels)` or `embedding_task()`.
        batch_size (`int`, defaults to 8): windows per model call.
        read_ahead (`int`, defaults to 2): batches decoded ahead of the model (bounds the memory held).
        on_batch (`Callable`, *optional*): called with each batch's windows once they are done (progress bars).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    events: queue.Queue = queue.Queue(maxsize=max(1, read_ahead) * batch_size)
    stop = threading.Event()
    reader = threading.Thread(target=_read_ahead, args=(recordings, events, stop), daemon=True,
                              name="naturelm-audio-reader")
    states: dict[int, _State] = {}
    pending: list[tuple[_State, int, AudioWindow]] = []
    next_index = 0

    def run_batch() -> None:
        if not pending:
            return
        windows = [window for _, _, window in pending]
        for (state, number, _), row in zip(pending, answer_windows(model, processor, task, windows)):
            state.rows[number] = row
        pending.clear()
        if on_batch is not None:
            on_batch(windows)

    def finished() -> Iterator[RecordingResult]:
        nonlocal next_index
        while next_index in states and states[next_index].finished:
            state = states.pop(next_index)
            next_index += 1
            rows = [] if state.result.error else [state.rows[n] for n in range(state.windows)]
            yield RecordingResult(state.result.index, state.result.key, rows, state.result.error)

    reader.start()
    try:
        while (event := events.get()) is not _DONE:
            index, recording, payload = event
            state = states.setdefault(index, _State(RecordingResult(index, recording.key)))
            if isinstance(payload, AudioWindow):
                pending.append((state, state.windows, payload))
                state.windows += 1
                if len(pending) >= batch_size:
                    run_batch()
            else:  # read to its end; `payload` is the reason it could not be read, if any
                state.done, state.result.error = True, payload
                if payload is not None:
                    pending[:] = [item for item in pending if item[0] is not state]
            yield from finished()
        run_batch()
        yield from finished()
    finally:
        stop.set()
        reader.join()


@dataclass
class _State:
    result: RecordingResult
    rows: dict[int, dict] = field(default_factory=dict)
    windows: int = 0
    done: bool = False

    @property
    def finished(self) -> bool:
        return self.done and (self.result.error is not None or len(self.rows) == self.windows)


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
        task = label_task(candidate_labels) if candidate_labels is not None else generation_task(**generate_kwargs)
        recordings = [self.preprocess(item, index, q, sampling_rate, window_seconds, hop_seconds)
                      for index, (item, q) in enumerate(zip(inputs, queries))]
        results = []
        batches = run_recordings(self.model, self.processor, recordings,
                                 lambda model, processor, windows: self._forward(windows, task), batch_size)
        for result in batches:
            if result.error is not None:
                raise ValueError(f"{result.key} {result.error}.")
            results.append(self.postprocess(inputs[result.index], result.rows))
        return results[0] if single else results

    def preprocess(self, item, index: int = 0, query: str = DEFAULT_QUERY, sampling_rate: int | None = None,
                   window_seconds: float = 10.0, hop_seconds: float | None = None) -> Recording:
        """A path is read lazily (block by block); an array is checked, mixed to mono and resampled now."""
        prompt = build_prompt(self.processor, query)
        if isinstance(item, (str, Path)):
            return Recording.from_file(item, window_seconds, hop_seconds, prompt)
        name = f"input {index}"
        if isinstance(item, dict):
            item, rate = item.get("array", item.get("raw")), item.get("sampling_rate", sampling_rate)
        else:
            rate = sampling_rate
        try:
            samples = to_mono(item, rate, self.processor.feature_extractor.sampling_rate, name=name)
        except AudioError as error:
            raise ValueError(str(error)) from None
        return Recording.from_array(name, samples, window_seconds, hop_seconds, prompt)

    def _forward(self, windows: list[AudioWindow], task: Task) -> list[dict]:
        """One batch of windows (from any inputs) through the task; `run_recordings` forms the batches."""
        return task(self.model, self.processor, windows)

    def postprocess(self, item, rows: list[dict]) -> dict:
        return {"file": str(item) if isinstance(item, (str, Path)) else None, "windows": rows}


__all__ = [
    "DEFAULT_QUERY",
    "TASK",
    "AudioWindow",
    "NatureLMPipeline",
    "Recording",
    "RecordingResult",
    "answer_windows",
    "build_prompt",
    "embedding_task",
    "generation_task",
    "label_task",
    "rank_labels",
    "read_windows",
    "run_recordings",
    "window_clips",
]
