"""What the tests know about the recordings of the audio fixture (`NATURELM_AUDIO_DIR`, by default ../shared/audio):
read from the files themselves, never written down, so that the tests run unchanged on another folder of
recordings. The tests pick the recordings they need by what they are (longest, longer than a window, ...), not by
name."""

import math
from dataclasses import dataclass
from pathlib import Path

import soundfile

AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".ogg"}
MODEL_RATE = 16000  # the model's sampling rate: windows are counted in samples at this rate


@dataclass(frozen=True)
class Recording:
    path: Path
    header_seconds: float  # frames / rate as the header says (what `audio_naturelm.audio_info` and the Space read)
    decoded_seconds: float  # what decoding gives (compressed formats may decode to another length): windows, ends
    size_mb: float  # file size in MiB (2**20 bytes), as the Space's upload cap counts it
    channels: int
    sampling_rate: int

    @property
    def name(self) -> str:
        return self.path.name


def read_recordings(audio_dir: Path) -> list[Recording]:
    """Every recording of `audio_dir`, in name order."""
    recordings = []
    for path in sorted(p for p in Path(audio_dir).iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES):
        info = soundfile.info(str(path))
        frames = soundfile.read(str(path), dtype="float32", always_2d=True)[0].shape[0]
        recordings.append(Recording(path, info.frames / info.samplerate, frames / info.samplerate,
                                    path.stat().st_size / 2**20, info.channels, info.samplerate))
    return recordings


def num_windows(seconds: float, window: float, hop: float) -> int:
    """How many windows of `window` s every `hop` s cover `seconds` s of audio: starts every hop until a window
    reaches the end (the last one partial), and none starting at or after the end. Written as a closed form, apart
    from the package's loop (`audio_naturelm.window_starts`) that it checks."""
    samples, window, hop = (round(value * MODEL_RATE) for value in (seconds, window, hop))
    return 1 + max(0, math.ceil((samples - max(window, hop)) / hop))


def window_starts(seconds: float, window: float, hop: float) -> list[float]:
    """Start times in seconds of those windows."""
    return [float(i * hop) for i in range(num_windows(seconds, window, hop))]


def space_accepts(recordings: list[Recording], settings: dict) -> list[Recording]:
    """The recordings a Space run with `settings` (its NATURELM_* environment) takes as uploads."""
    max_mb, max_seconds = float(settings["NATURELM_MAX_FILE_MB"]), float(settings["NATURELM_MAX_SECONDS"])
    return [r for r in recordings if r.size_mb <= max_mb and r.header_seconds <= max_seconds]


def chat_recording(recordings: list[Recording]) -> Recording:
    """The shortest recording longer than the 10 s the chat hears (so that the chat says it hears the first 10 s)."""
    longer = [r for r in recordings if r.header_seconds > 10]
    assert longer, "need a recording longer than 10 s"
    return min(longer, key=lambda r: r.header_seconds)


def several_windows_recording(recordings: list[Recording], window: float = 10, hop: float = 5,
                              max_windows: int | None = None) -> Recording:
    """The shortest recording with at least three windows (the last one partial or not) and at most `max_windows`."""
    fitting = [r for r in recordings if 3 <= num_windows(r.decoded_seconds, window, hop)
               and (max_windows is None or num_windows(r.header_seconds, window, hop) <= max_windows)]
    assert fitting, f"need a recording with at least three {window:g}-s windows every {hop:g} s"
    return min(fitting, key=lambda r: r.decoded_seconds)


__all__ = [
    "AUDIO_SUFFIXES", "MODEL_RATE", "Recording", "chat_recording", "num_windows", "read_recordings",
    "several_windows_recording", "space_accepts", "window_starts",
]
