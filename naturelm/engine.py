"""The NatureLM-audio inference engine: recordings in, one result per window out.

`run_recordings` is the one place where windows of many recordings meet the model: it reads the recordings ahead in
a background thread (through `audio_naturelm`, the one audio path), batches their windows across recordings, runs
each batch through a task (generation, candidate-label scoring or embeddings) and hands back every recording's rows,
in order, as soon as its last window is done. `naturelm infer` / `embed`, the Space and BEANS-Zero evaluation use it;
Ray's actors use its batch step, `answer_windows`.

The model calls themselves (`generate_answers`, `score_candidate_labels`, `embed_windows`) are the remote-code
pipeline's (`pipeline_naturelm`), which a checkpoint carries; this module, which no checkpoint needs, adds the
threads, the batching across recordings and the per-recording bookkeeping.
"""

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from audio_naturelm import AudioError, array_windows, stream_windows
from pipeline_naturelm import (
    DEFAULT_QUERY,
    TASK,
    AudioWindow,
    build_prompt,
    embed_windows,
    generate_answers,
    rank_labels,
    score_candidate_labels,
    window_rows,
)

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
    return window_rows(windows, outputs)


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


__all__ = [
    "DEFAULT_QUERY",
    "TASK",
    "AudioWindow",
    "Recording",
    "RecordingResult",
    "Task",
    "answer_windows",
    "build_prompt",
    "embedding_task",
    "generation_task",
    "label_task",
    "read_windows",
    "run_recordings",
]
