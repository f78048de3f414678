"""Reading training audio: every form a `datasets` row can hold becomes 16 kHz mono float32, or a clear error."""

import io
import os
from pathlib import Path

import numpy as np
import soundfile
import soxr

SAMPLING_RATE = 16000
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")


class AudioDecodeError(ValueError):
    """A row's audio cannot be turned into a waveform (missing file, undecodable bytes, empty or non-finite)."""


def to_mono_16k(waveform: np.ndarray, sampling_rate: int) -> np.ndarray:
    """Averages channels (last axis when 2-D and wider than tall, as soundfile returns `(frames, channels)`) and
    resamples to 16 kHz with soxr."""
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim == 2:
        waveform = waveform.mean(axis=1 if waveform.shape[0] >= waveform.shape[1] else 0)
    if waveform.ndim != 1:
        raise AudioDecodeError(f"Expected mono or multi-channel audio, got an array of shape {waveform.shape}.")
    if sampling_rate != SAMPLING_RATE:
        waveform = soxr.resample(waveform, sampling_rate, SAMPLING_RATE).astype(np.float32, copy=False)
    return waveform


def decode_audio(value, sampling_rate: int | None = None) -> np.ndarray:
    """
    Returns 16 kHz mono float32 audio for one row's `audio` value.

    Args:
        value: `{"bytes": ..., "path": ...}` (the storage of `datasets.Audio(decode=False)`; bytes win over the path),
            a file path, a decoded `{"array": ..., "sampling_rate": ...}` dict, or a numeric array / list.
        sampling_rate (`int`, *optional*): rate of a bare numeric array; required for one.

    Raises:
        [`AudioDecodeError`]: the audio is missing, unreadable, empty or not finite.
    """
    if value is None:
        raise AudioDecodeError("The row has no audio.")
    if isinstance(value, (str, os.PathLike)):
        value = {"path": os.fspath(value), "bytes": None}
    if isinstance(value, dict) and "array" in value:
        waveform, rate = value["array"], value.get("sampling_rate") or sampling_rate
    elif isinstance(value, dict):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        if not source:
            raise AudioDecodeError("The row's audio has neither bytes nor a path.")
        try:
            waveform, rate = soundfile.read(source, dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, OSError, TypeError, ValueError) as error:
            where = value.get("path") or "embedded bytes"
            raise AudioDecodeError(f"Cannot read audio {where}: {error}") from error
    else:
        waveform, rate = value, sampling_rate
    if rate is None:
        raise AudioDecodeError("A raw audio array needs a sampling rate (a `sampling_rate` column or setting).")
    try:
        waveform = to_mono_16k(np.asarray(waveform, dtype=np.float32), int(rate))
    except (TypeError, ValueError) as error:
        raise AudioDecodeError(f"Cannot use the row's audio: {error}") from error
    if waveform.size == 0:
        raise AudioDecodeError("The audio has 0 samples.")
    if not np.isfinite(waveform).all():
        raise AudioDecodeError("The audio holds non-finite samples (NaN or inf).")
    return waveform


def list_audio_files(folders: list[str | Path]) -> list[str]:
    """Every audio file under the given folders (recursively), sorted, as strings."""
    files = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"Noise folder {folder} does not exist.")
        files += sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    return files


__all__ = ["AUDIO_EXTENSIONS", "SAMPLING_RATE", "AudioDecodeError", "decode_audio", "list_audio_files", "to_mono_16k"]
