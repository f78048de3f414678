# Copyright 2026 The NatureLM-audio HF authors. Licensed under the MIT License.
"""The one audio path of NatureLM-audio: decode, mix to mono, resample to the model's rate, cut into windows.

Every door (the pipeline, `naturelm infer` / `embed`, the Space, BEANS-Zero evaluation, training) reads audio here,
so the same file or array gives the same samples whichever door it goes through. Files are read and resampled block
by block, so an hour-long recording never sits in memory whole.

Travels with checkpoints as remote code (the pipeline and the feature extractor use it), so it imports only numpy and
the standard library at the top; `soundfile` (decoding) and `soxr` (resampling) are imported where they are used.
"""

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np


SAMPLING_RATE = 16000
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")
BLOCK_SECONDS = 60.0

AudioSource = str | os.PathLike | bytes | io.IOBase


class AudioError(ValueError):
    """Audio that cannot be used; the message says why in words a user can act on."""


def resample(samples: np.ndarray, rate: int, target: int = SAMPLING_RATE) -> np.ndarray:
    """Mono float32 `samples` at `rate` -> `target` Hz (soxr, high quality). The same streaming resampler as files
    go through, so an array gives exactly the samples its file would."""
    samples = np.ascontiguousarray(samples, dtype=np.float32)
    if rate == target:
        return samples
    import soxr

    return soxr.ResampleStream(rate, target, 1, dtype="float32").resample_chunk(samples, last=True)


def to_mono(samples: np.ndarray, rate: int | None, target: int = SAMPLING_RATE, name: str = "audio") -> np.ndarray:
    """Validates an array (1-D, or 2-D with the shorter axis as channels) and returns it mono float32 at `target`."""
    if hasattr(samples, "detach"):  # a torch tensor
        samples = samples.detach().float().cpu().numpy()
    samples = np.asarray(samples)
    if rate is None or rate <= 0 or rate != int(rate):
        raise AudioError(f"{name}: a raw array needs its `sampling_rate` (a positive integer), got {rate}.")
    if samples.dtype.kind != "f":
        raise AudioError(f"{name}: dtype {samples.dtype} is not supported; pass float audio in [-1, 1].")
    if samples.ndim == 2:
        samples = samples.mean(axis=0 if samples.shape[0] <= samples.shape[1] else 1)
    if samples.ndim != 1 or samples.size == 0:
        raise AudioError(f"{name}: expected a non-empty 1-D or 2-D array, got shape {samples.shape}.")
    if not np.isfinite(samples).all():
        raise AudioError(f"{name}: contains NaN or infinite samples.")
    return resample(samples, int(rate), target)


def _describe(source: AudioSource) -> str:
    return "embedded bytes" if isinstance(source, (bytes, io.IOBase)) else str(source)


def audio_info(source: AudioSource) -> tuple[int, int]:
    """(frames, sample rate) of a readable file or bytes; raises `AudioError` saying why otherwise."""
    import soundfile

    if isinstance(source, bytes):
        source = io.BytesIO(source)
    if not isinstance(source, io.IOBase):
        path = Path(source)
        if path.is_dir():
            raise AudioError("is a directory, not an audio file")
        if not path.exists():
            raise AudioError("does not exist (a broken link?)")
        if path.stat().st_size == 0:
            raise AudioError("is an empty file (0 bytes)")
        try:
            open(path, "rb").close()
        except PermissionError:
            raise AudioError("cannot be read: permission denied (check the file's permissions)") from None
        source = str(path)
    try:
        info = soundfile.info(source)
    except (soundfile.LibsndfileError, RuntimeError, OSError, TypeError) as error:
        raise AudioError(f"cannot be decoded (corrupt or not a supported format: {error})") from None
    finally:
        if isinstance(source, io.IOBase):
            source.seek(0)
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError("holds no audio samples")
    return info.frames, info.samplerate


def stream_audio(source: AudioSource, target: int = SAMPLING_RATE) -> Iterator[np.ndarray]:
    """Yields the recording as consecutive blocks of mono float32 samples at `target` Hz, decoding and resampling
    `BLOCK_SECONDS` at a time. Raises `AudioError` (at the start, or where decoding fails) for a bad file."""
    import soundfile

    frames, rate = audio_info(source)
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    resampler = None
    if rate != target:
        import soxr

        resampler = soxr.ResampleStream(rate, target, 1, dtype="float32")
    produced = 0
    try:
        with soundfile.SoundFile(source if isinstance(source, io.IOBase) else str(source)) as handle:
            while True:
                block = handle.read(int(BLOCK_SECONDS * rate), dtype="float32", always_2d=True)
                last = len(block) == 0 or handle.tell() >= frames
                if len(block) and not np.isfinite(block).all():
                    raise AudioError(f"contains NaN or infinite samples (near {handle.tell() / rate:.1f} s)")
                mono = block.mean(axis=1)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono, last=last)
                produced += len(mono)
                if len(mono):
                    yield mono
                if last:
                    break
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise AudioError(f"cannot be decoded past {produced / target:.1f} s ({error})") from None
    if produced == 0:
        raise AudioError("holds no audio samples")


def read_audio(source: AudioSource, target: int = SAMPLING_RATE) -> np.ndarray:
    """The whole recording, mono float32 at `target` Hz (for clips; long recordings go through `stream_windows`)."""
    return np.concatenate(list(stream_audio(source, target)))


def window_starts(num_samples: int, window: int, hop: int) -> list[int]:
    """Start samples of the windows covering a recording: every `hop` until a window has reached the end, so the last
    partial window is kept (it is zero-padded to the window and reported with its true end)."""
    starts = [0]
    while starts[-1] + window < num_samples and starts[-1] + hop < num_samples:
        starts.append(starts[-1] + hop)
    return starts


def _window_samples(window_seconds: float, hop_seconds: float | None, rate: int) -> tuple[int, int]:
    window, hop = round(window_seconds * rate), round((hop_seconds or window_seconds) * rate)
    if window <= 0 or hop <= 0:
        raise ValueError(f"The window ({window_seconds} s) and the hop ({hop_seconds} s) must be positive.")
    return window, hop


def array_windows(
    samples: np.ndarray, window_seconds: float, hop_seconds: float | None = None, rate: int = SAMPLING_RATE
) -> Iterator[tuple[float, float, np.ndarray]]:
    """(start s, end s, samples) of every window of an in-memory mono recording at `rate` (see `window_starts`)."""
    window, hop = _window_samples(window_seconds, hop_seconds, rate)
    for start in window_starts(len(samples), window, hop):
        segment = samples[start : start + window]
        yield start / rate, (start + len(segment)) / rate, segment


def stream_windows(
    source: AudioSource, window_seconds: float, hop_seconds: float | None = None, target: int = SAMPLING_RATE
) -> Iterator[tuple[float, float, np.ndarray]]:
    """(start s, end s, mono samples at `target` Hz) for each window of a file, as `array_windows` would give for the
    whole decoded file, but holding only about one block in memory. The length of a compressed file is only known at
    the end of its stream (it may decode to another length than its header says), so windows are made lazily."""
    window, hop = _window_samples(window_seconds, hop_seconds, target)
    buffer, buffer_start, produced, start = np.zeros(0, np.float32), 0, 0, 0
    blocks = stream_audio(source, target)
    block = next(blocks)
    while block is not None:
        buffer = np.concatenate([buffer, block])
        produced += len(block)
        block = next(blocks, None)
        last = block is None
        while start + window < produced or (last and start < produced):
            segment = buffer[start - buffer_start : start - buffer_start + window]
            yield start / target, (start + len(segment)) / target, segment
            if start + window >= produced:  # only reachable once the whole file is decoded: this window hit the end
                return
            start += hop
            drop = min(start - buffer_start, len(buffer))
            buffer, buffer_start = buffer[drop:], buffer_start + drop


def find_audio_files(inputs: list[str]) -> list[Path]:
    """Files named on the command line, and every file or folder with an audio extension below named folders
    (a folder named like `x.wav` is kept, so it is reported rather than silently skipped)."""
    found = []
    for path in map(Path, inputs):
        if path.is_dir() and path.suffix.lower() not in AUDIO_EXTENSIONS:
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
        else:
            found.append(path)
    return found


__all__ = [
    "AUDIO_EXTENSIONS",
    "SAMPLING_RATE",
    "AudioError",
    "array_windows",
    "audio_info",
    "find_audio_files",
    "read_audio",
    "resample",
    "stream_audio",
    "stream_windows",
    "to_mono",
    "window_starts",
]
