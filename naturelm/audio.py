"""Streaming audio reading for long field recordings: bounded memory, one clear reason when a file is bad."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile
import soxr


AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")
BLOCK_SECONDS = 60.0


class AudioError(Exception):
    """A recording that cannot be used; the message says why in words a user can act on."""


def audio_info(path: Path) -> tuple[int, int]:
    """(frames, sample rate) of a readable file; raises AudioError otherwise."""
    if path.is_dir():
        raise AudioError("is a directory, not an audio file")
    if not path.exists():
        raise AudioError("does not exist (a broken link?)")
    if path.stat().st_size == 0:
        raise AudioError("is an empty file (0 bytes)")
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        raise AudioError(f"cannot be decoded (corrupt or not a supported format: {error})") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError("holds no audio samples")
    return info.frames, info.samplerate


def stream_windows(
    path: Path, window_seconds: float, hop_seconds: float, sampling_rate: int = 16000
) -> Iterator[tuple[float, float, np.ndarray]]:
    """Yields (start s, end s, 16 kHz mono float32 samples) for each window of a file, reading and resampling it
    block by block (soxr's streaming resampler), so a one-hour file never sits in memory whole."""
    frames, rate = audio_info(path)
    window, hop = round(window_seconds * sampling_rate), round(hop_seconds * sampling_rate)
    # Windows start every `hop` until one reaches the end (as `window_starts`); the length is only known at the end of
    # the stream (compressed formats may decode to another length than their header says), so starts are made lazily.
    start, finished = 0, False
    buffer, buffer_start, produced = np.zeros(0, np.float32), 0, 0
    resampler = soxr.ResampleStream(rate, sampling_rate, 1, dtype="float32") if rate != sampling_rate else None
    try:
        with soundfile.SoundFile(str(path)) as handle:
            while not finished:
                block = handle.read(int(BLOCK_SECONDS * rate), dtype="float32", always_2d=True)
                last = len(block) == 0 or handle.tell() >= frames
                if len(block) and not np.isfinite(block).all():
                    raise AudioError(f"contains NaN or infinite samples (near {handle.tell() / rate:.1f} s)")
                mono = block.mean(axis=1)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono, last=last)
                buffer = np.concatenate([buffer, mono])
                produced += len(mono)
                while start + window < produced or (last and start < produced):
                    segment = buffer[start - buffer_start : start - buffer_start + window]
                    yield start / sampling_rate, (start + len(segment)) / sampling_rate, segment
                    if start + window >= produced:  # only reachable on the last block: this window hit the end
                        finished = True
                        break
                    start += hop
                    drop = min(start - buffer_start, len(buffer))
                    buffer, buffer_start = buffer[drop:], buffer_start + drop
                finished = finished or last
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise AudioError(f"cannot be decoded past {produced / sampling_rate:.1f} s ({error})") from None
    if produced == 0:
        raise AudioError("holds no audio samples")


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
