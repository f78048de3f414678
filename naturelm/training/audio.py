"""Reading training audio: every form a `datasets` row can hold becomes 16 kHz mono float32, or a clear error."""

import os
from pathlib import Path

import numpy as np

from audio_naturelm import AUDIO_EXTENSIONS, SAMPLING_RATE, AudioError, read_audio, to_mono


class AudioDecodeError(ValueError):
    """A row's audio cannot be turned into a waveform (missing file, undecodable bytes, empty or non-finite)."""


def decode_audio(value, sampling_rate: int | None = None) -> np.ndarray:
    """
    Returns 16 kHz mono float32 audio for one row's `audio` value, through the package's one audio path
    (`audio_naturelm`), so a training clip has the samples inference would read from the same file.

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
    if isinstance(value, dict) and "array" not in value:
        if not (value.get("bytes") or value.get("path")):
            raise AudioDecodeError("The row's audio has neither bytes nor a path.")
        try:
            return read_audio(value.get("bytes") or value["path"])
        except AudioError as error:
            raise AudioDecodeError(f"Cannot read audio {value.get('path') or 'embedded bytes'}: {error}") from error
    waveform, rate = (value["array"], value.get("sampling_rate")) if isinstance(value, dict) else (value, None)
    rate = rate or sampling_rate
    if rate is None:
        raise AudioDecodeError("A raw audio array needs a sampling rate (a `sampling_rate` column or setting).")
    try:
        return to_mono(np.asarray(waveform, dtype=np.float32), int(rate))
    except (AudioError, TypeError, ValueError) as error:
        raise AudioDecodeError(f"Cannot use the row's audio: {error}") from error


def list_audio_files(folders: list[str | Path]) -> list[str]:
    """Every audio file under the given folders (recursively), sorted, as strings."""
    files = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"Noise folder {folder} does not exist.")
        files += sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    return files


__all__ = ["AUDIO_EXTENSIONS", "SAMPLING_RATE", "AudioDecodeError", "decode_audio", "list_audio_files"]
