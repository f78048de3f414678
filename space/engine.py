"""The Space's model side: settings from environment variables, the model (loaded once, lazily), the checks that run
before a job takes the GPU, and the three jobs (chat, long recording, your own labels).

Only `answer_clip` and `run_windows` need the GPU; on ZeroGPU they run under `spaces.GPU`, elsewhere as they are.
Everything about windows, batching and Raven/CSV tables is the `naturelm` package's own code.
"""

import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd
import torch

from audio_naturelm import AudioError, audio_info, read_audio, stream_windows, window_starts
from naturelm.convert import DTYPES, ORIGINAL_DECODING
from naturelm.infer import MemoryWriter, format_table, run
from naturelm.loading import RELEASED_BASE_MODEL, RELEASED_MODEL, ModelFilesError, WeightsUnavailableError, load
from naturelm.engine import DEFAULT_QUERY, Recording, generation_task, run_recordings
from naturelm.quantization import BITSANDBYTES
from naturelm.plotting import figure_png, plot_windows, window_label
from processing_naturelm import audio_instruction

try:  # Hugging Face's ZeroGPU helper; absent (or inactive) anywhere else
    import spaces
except ImportError:
    spaces = None

TINY = "tiny"
CLIP_SECONDS = 10.0  # what the model hears at once; the chat listens to the first clip of a recording
SAMPLING_RATE = 16000
MAX_LABELS = 50

PRESETS = {
    "Species": DEFAULT_QUERY,
    "Caption": "Caption the audio, using the common name for any animal species.",
    "Call type": "What call types are heard from the focal species in the audio?",
    "Life stage": "What is the life stage of the focal species in the audio?",
    "Detection": "What are the common names for the species in the audio, if any?",
}


def _env_bool(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


ON_ZERO_GPU = spaces is not None and _env_bool(os.environ.get("SPACES_ZERO_GPU"))


@dataclass(frozen=True)
class Settings:
    """What a Space owner can set (environment variables, shown in the Space README)."""

    model: str = RELEASED_MODEL  # NATURELM_MODEL: converted folder, original checkpoint, hub id, or "tiny"
    base_model: str = RELEASED_BASE_MODEL  # NATURELM_BASE_MODEL: the Llama that original checkpoints need
    dtype: str = "bf16"  # NATURELM_DTYPE: bf16, fp16 or fp32
    quantize: str | None = None  # NATURELM_QUANTIZE: nf4 or int8 (bitsandbytes; the merging-alpha slider still works)
    device: str = "cpu"  # NATURELM_DEVICE: default cuda when there is one
    max_file_mb: float = 50.0  # NATURELM_MAX_FILE_MB: the upload cap
    max_seconds: float = 600.0  # NATURELM_MAX_SECONDS: the longest recording accepted
    max_windows: int = 120  # NATURELM_MAX_WINDOWS: the most windows one long-recording run may have
    batch_size: int = 8  # NATURELM_BATCH_SIZE: windows per forward pass
    concurrency: int = 1  # NATURELM_CONCURRENCY: jobs running at once (the rest wait in the queue)
    queue_size: int = 20  # NATURELM_QUEUE_SIZE: jobs that may wait; more are turned away with a message
    examples_dir: str | None = None  # NATURELM_EXAMPLES_DIR: recordings offered as examples

    @property
    def smoke(self) -> bool:
        return self.model == TINY

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        default_device = "cuda" if ON_ZERO_GPU or torch.cuda.is_available() else "cpu"

        def number(name: str, kind, default, minimum):
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a {kind.__name__}.") from None
            if not value >= minimum:
                raise ValueError(f"{name}={raw!r} must be at least {minimum}.")
            return value

        dtype = env.get("NATURELM_DTYPE", cls.dtype)
        if dtype not in DTYPES:
            raise ValueError(f"NATURELM_DTYPE={dtype!r}; choose one of {', '.join(sorted(DTYPES))}.")
        quantize = env.get("NATURELM_QUANTIZE") or None
        if quantize is not None and quantize not in BITSANDBYTES:
            raise ValueError(f"NATURELM_QUANTIZE={quantize!r}; choose one of {', '.join(BITSANDBYTES)} (the Space keeps "
                             "the LoRA adapter unmerged for its merging-alpha slider, which fbgemm-int8 cannot).")
        here = Path(__file__).resolve().parent / "examples"
        return cls(
            model=env.get("NATURELM_MODEL", cls.model),
            base_model=env.get("NATURELM_BASE_MODEL", cls.base_model),
            dtype=dtype,
            quantize=quantize,
            device=env.get("NATURELM_DEVICE", default_device),
            max_file_mb=number("NATURELM_MAX_FILE_MB", float, cls.max_file_mb, 0.001),
            max_seconds=number("NATURELM_MAX_SECONDS", float, cls.max_seconds, 1.0),
            max_windows=number("NATURELM_MAX_WINDOWS", int, cls.max_windows, 1),
            batch_size=number("NATURELM_BATCH_SIZE", int, cls.batch_size, 1),
            concurrency=number("NATURELM_CONCURRENCY", int, cls.concurrency, 1),
            queue_size=number("NATURELM_QUEUE_SIZE", int, cls.queue_size, 1),
            examples_dir=env.get("NATURELM_EXAMPLES_DIR") or (str(here) if here.is_dir() else None),
        )


class ModelHolder:
    """Loads the model on first use (or at start-up on ZeroGPU, where the GPU jobs run in forked workers) and keeps
    it; a lock keeps one job at a time on it, since the merging-α slider changes its LoRA scale per call."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.lock = threading.Lock()
        self._loaded = None

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def get(self):
        with self.lock:
            if self._loaded is None:
                s = self.settings
                try:
                    # the adapter stays unmerged: the merging-α slider sets its scale per call
                    self._loaded = load(s.model, base_model=s.base_model, dtype=DTYPES[s.dtype], smoke=s.smoke,
                                        quantize=s.quantize, device=s.device, merge_adapter=False)
                except WeightsUnavailableError as error:
                    raise gr.Error(
                        f"{str(error).splitlines()[0]} Set NATURELM_MODEL to a converted folder or a hub id this "
                        "Space can read (gated models need an HF_TOKEN secret of an account that accepted their "
                        "licences), or NATURELM_MODEL=tiny to try the app on a tiny random model.",
                        title="Model unavailable") from error
                except ModelFilesError as error:  # the files are here but broken: a login would not help
                    raise gr.Error(f"{error} Set NATURELM_MODEL to a complete model, or NATURELM_MODEL=tiny to try "
                                   "the app on a tiny random model.", title="Model files broken") from error
            return self._loaded


def default_alpha(settings: Settings) -> float:
    """The merging α the model was saved with (a converted folder may carry one), 1.0 otherwise; read from the
    config alone, so the UI can show it before the model is loaded."""
    config = Path(settings.model) / "config.json"
    if not settings.smoke and config.is_file():
        return float(json.loads(config.read_text()).get("merging_alpha", 1.0))
    return 1.0


def default_max_new_tokens(settings: Settings) -> int:
    """The longest answer the checkpoint's generation config asks for (the original decodes up to 300 new tokens),
    read from its `generation_config.json` alone, so the UI can show it before the model is loaded."""
    generation = Path(settings.model) / "generation_config.json"
    if not settings.smoke and generation.is_file():
        return int(json.loads(generation.read_text()).get("max_new_tokens") or ORIGINAL_DECODING["max_new_tokens"])
    return ORIGINAL_DECODING["max_new_tokens"]


SETTINGS = Settings.from_env()
MODEL = ModelHolder(SETTINGS)


def gpu(duration):
    """`spaces.GPU(duration=...)` on ZeroGPU (where `duration` may be a function of the call's arguments giving
    seconds); the function unchanged everywhere else."""

    def decorate(function):
        return spaces.GPU(duration=duration)(function) if spaces is not None else function

    return decorate


# Checks that run before a job takes the GPU; each failure is a message a person can act on.

def check_audio(path: str | None, settings: Settings = SETTINGS) -> float:
    """The recording's duration in seconds, or a gr.Error saying what is wrong with it."""
    if not path:
        raise gr.Error("Upload or record a recording first.", title="No audio")
    path = Path(path)
    size_mb = path.stat().st_size / 2**20 if path.is_file() else 0.0
    if size_mb > settings.max_file_mb:
        raise gr.Error(f"{path.name} is {size_mb:.1f} MB; this Space takes files up to {settings.max_file_mb:g} MB.",
                       title="File too large")
    try:
        frames, rate = audio_info(path)
    except AudioError as error:
        raise gr.Error(f"{path.name} {error}.", title="Unreadable audio") from None
    duration = frames / rate
    if duration > settings.max_seconds:
        raise gr.Error(
            f"{path.name} is {duration:.1f} s long; this Space takes recordings up to {settings.max_seconds:g} s. "
            "Cut it into parts, or run `naturelm infer` on your own machine for recordings of any length.",
            title="Recording too long",
        )
    return duration


def check_windows(duration: float, window: float, hop: float, settings: Settings = SETTINGS) -> int:
    """The number of windows a run will have, or a gr.Error when the settings make no sense or too many."""
    if not (0 < window <= CLIP_SECONDS) or hop <= 0:
        raise gr.Error(f"The window must be between 0 and {CLIP_SECONDS:g} s and the hop positive "
                       f"(got {window:g} s and {hop:g} s).", title="Window settings")
    count = len(window_starts(round(duration * SAMPLING_RATE), round(window * SAMPLING_RATE),
                              round(hop * SAMPLING_RATE)))
    if count > settings.max_windows:
        raise gr.Error(f"A {window:g}-s window every {hop:g} s makes {count} windows over {duration:.1f} s; this Space "
                       f"runs at most {settings.max_windows} per request. Use a longer hop or a shorter recording.",
                       title="Too many windows")
    return count


def parse_labels(text: str | None) -> list[str]:
    """Labels typed one per line or separated by commas; blanks and repeats dropped, order kept."""
    labels = list(dict.fromkeys(label.strip() for label in re.split(r"[,\n]", text or "") if label.strip()))
    if len(labels) < 2:
        raise gr.Error("Give at least two labels, one per line or separated by commas.", title="Labels")
    if len(labels) > MAX_LABELS:
        raise gr.Error(f"Got {len(labels)} labels; this Space scores at most {MAX_LABELS} at once.", title="Labels")
    return labels


def check_question(question: str | None) -> str:
    question = (question or "").strip()
    if not question:
        raise gr.Error("Type a question, or pick a preset.", title="No question")
    return question


# The GPU-bound part: the only functions that touch the model.

def _window_seconds(path, query, labels, window, hop, *args, **kwargs) -> int:
    """ZeroGPU time to reserve for a run: a fixed part plus a share per window."""
    try:
        frames, rate = audio_info(Path(path))
        count = len(window_starts(frames * SAMPLING_RATE // rate, round(window * SAMPLING_RATE),
                                  round(hop * SAMPLING_RATE)))
    except (AudioError, OSError, ZeroDivisionError):
        count = SETTINGS.max_windows
    return int(20 + 1.5 * count)


@gpu(duration=30)
def answer_clip(clip: np.ndarray, messages: list[dict], alpha: float, max_new_tokens: int) -> str:
    """The model's next answer in a conversation about one clip (16 kHz mono)."""
    model, processor = MODEL.get()
    with MODEL.lock:
        model.set_merging_alpha(alpha)
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        recording = Recording.from_array("chat", clip, CLIP_SECONDS, prompt=prompt)
        task = generation_task(max_new_tokens=int(max_new_tokens))
        (result,) = run_recordings(model, processor, [recording], task, batch_size=1)
    return result.rows[0]["text"]


@gpu(duration=_window_seconds)
def run_windows(path: str, query: str, labels: list[str] | None, window: float, hop: float, alpha: float,
                max_new_tokens: int) -> tuple[list[dict], str | None]:
    """Every window of a recording through `naturelm.infer.run` (generated answers, or scores over `labels`):
    the rows and the error, if the file turned out bad while decoding."""
    model, processor = MODEL.get()
    writer = MemoryWriter()
    with MODEL.lock, torch.inference_mode():
        model.set_merging_alpha(alpha)
        run(model, processor, [Path(path)], writer, query, labels, window, hop, SETTINGS.batch_size, progress=True,
            max_new_tokens=int(max_new_tokens))
    return writer.results[str(Path(path))]


# The three jobs, as the UI (and the API) calls them.

def _message_text(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")


def conversation(history: list[dict], question: str) -> list[dict]:
    """The NatureLM messages for a chat: the audio goes with the first question, then the turns as they happened."""
    messages = []
    for message in history:
        if message["role"] in ("user", "assistant"):
            messages.append({"role": message["role"], "content": _message_text(message)})
    messages.append({"role": "user", "content": question})
    messages[0] = {"role": "user", "content": audio_instruction(messages[0]["content"])}
    return messages


def first_clip(path: str) -> np.ndarray:
    """The first 10 s of a recording, 16 kHz mono (what the chat talks about)."""
    windows = stream_windows(Path(path), CLIP_SECONDS, CLIP_SECONDS)
    try:
        return next(windows)[2]
    except AudioError as error:
        raise gr.Error(f"{Path(path).name} {error}.", title="Unreadable audio") from None
    finally:
        windows.close()  # closes the file now rather than whenever the generator is collected


def chat(audio: str | None, question: str | None, history: list[dict] | None, alpha: float,
         max_new_tokens: int) -> tuple[list[dict], str]:
    """Asks a question (a follow-up when `history` holds earlier turns) about the first 10 s of `audio`; returns
    the conversation with the new turn and an empty question box."""
    question = check_question(question)
    check_audio(audio)
    history = list(history or [])
    answer = answer_clip(first_clip(audio), conversation(history, question), alpha, max_new_tokens)
    history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer or "(no answer)"}]
    return history, ""


def describe_audio(audio: str | None) -> str:
    """One line about an uploaded recording, saying which part the chat hears."""
    if not audio:
        return ""
    try:
        duration = check_audio(audio)
    except gr.Error as error:
        return f"⚠️ {error.message}"
    frames, rate = audio_info(Path(audio))
    line = f"**{Path(audio).name}**: {duration:.1f} s at {rate / 1000:g} kHz."
    if duration > CLIP_SECONDS:
        line += (f" The chat hears its first {CLIP_SECONDS:g} s (trim the clip to pick another part); the "
                 "*Long recording* tab answers for every window.")
    return line


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _output_file(audio: str, suffix: str) -> Path:
    """A fresh file named after the recording (`robin.mp3` → `robin.selections.txt`) for the UI to serve."""
    return Path(tempfile.mkdtemp(prefix="naturelm-")) / f"{Path(audio).stem}{suffix}"


def long_recording(audio: str | None, query: str | None, window: float, hop: float, alpha: float,
                   max_new_tokens: int, progress=gr.Progress(track_tqdm=True)):
    """Answers `query` for every window: a summary line, the spectrogram with the answers on a timeline, the table,
    and the Raven selection table and CSV to download."""
    query = check_question(query)
    duration = check_audio(audio)
    check_windows(duration, window, hop)
    rows, error = run_windows(audio, query, None, window, hop, alpha, max_new_tokens)
    if error:
        raise gr.Error(f"{Path(audio).name} {error}.", title="Unreadable audio")
    name = Path(audio).name
    raven, table, picture = (_output_file(audio, suffix) for suffix in (".selections.txt", ".csv", ".png"))
    raven.write_text(format_table(Path(name), rows, "raven"))
    table.write_text(format_table(Path(name), rows, "csv"))
    clip = read_audio(Path(audio))
    figure_png(plot_windows(clip, SAMPLING_RATE, rows, title=f"{name} — {query}"), picture)
    frame = pd.DataFrame({"start (s)": [r["start"] for r in rows], "end (s)": [r["end"] for r in rows],
                          "answer": [window_label(r) for r in rows]})
    summary = (f"**{name}**: {_count(len(rows), 'window')} of {window:g} s every {hop:g} s over "
               f"{rows[-1]['end']:.1f} s, {_count(len(set(frame['answer'])), 'distinct answer')}.")
    return summary, str(picture), frame, str(raven), str(table)


def classify(audio: str | None, labels: str | None, query: str | None, alpha: float,
             progress=gr.Progress(track_tqdm=True)):
    """Probabilities over the user's labels: a bar chart (the mean over 10-s windows when the recording is longer),
    a table per window, and the CSV to download."""
    labels = parse_labels(labels)
    query = check_question(query)
    duration = check_audio(audio)
    check_windows(duration, CLIP_SECONDS, CLIP_SECONDS)
    rows, error = run_windows(audio, query, labels, CLIP_SECONDS, CLIP_SECONDS, alpha, 1)
    if error:
        raise gr.Error(f"{Path(audio).name} {error}.", title="Unreadable audio")
    mean = {label: float(np.mean([dict(zip(r["labels"], r["scores"]))[label] for r in rows])) for label in labels}
    bars = pd.DataFrame({"label": list(mean), "probability": list(mean.values())})
    bars = bars.sort_values("probability", ascending=False, kind="stable")
    per_window = pd.DataFrame({"start (s)": [r["start"] for r in rows], "end (s)": [r["end"] for r in rows],
                               "best label": [r["labels"][0] for r in rows],
                               "probability": [round(r["scores"][0], 4) for r in rows]})
    table = _output_file(audio, ".labels.csv")
    table.write_text(format_table(Path(Path(audio).name), rows, "csv"))
    best = bars.iloc[0]
    scope = "the recording" if len(rows) == 1 else f"the mean over {len(rows)} windows of {CLIP_SECONDS:g} s"
    summary = f"Most likely: **{best['label']}** ({best['probability']:.1%}, {scope})."
    return bars, summary, per_window, str(table)


__all__ = [
    "MODEL", "ON_ZERO_GPU", "PRESETS", "SETTINGS", "ModelHolder", "Settings", "answer_clip", "chat", "check_audio",
    "check_question", "check_windows", "classify", "conversation", "default_alpha", "describe_audio", "first_clip",
    "long_recording", "parse_labels", "run_windows",
]
