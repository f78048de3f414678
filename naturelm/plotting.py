"""Pictures of windowed results: a recording's spectrogram with each window's answer on a timeline under it.

Needs matplotlib (the `space` and `notebooks` extras). Figures are built without pyplot, so a server can draw them
from several threads; in a notebook, a returned figure shows like any other.
"""

import numpy as np
import torch

SPECTROGRAM_FFT = 512  # 32 ms at 16 kHz
MAX_SPECTROGRAM_FRAMES = 3000  # the hop grows with the recording so a long one stays a light picture
DYNAMIC_RANGE_DB = 80.0


def spectrogram_db(audio: np.ndarray, sampling_rate: int, n_fft: int = SPECTROGRAM_FFT) -> tuple[np.ndarray, float]:
    """Power spectrogram in dB below its maximum, shape `(n_fft // 2 + 1, frames)`, and the hop in seconds."""
    samples = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    if samples.numel() < n_fft:
        samples = torch.nn.functional.pad(samples, (0, n_fft - samples.numel()))
    hop = max(n_fft // 4, -(-samples.numel() // MAX_SPECTROGRAM_FRAMES))
    power = torch.stft(samples, n_fft, hop_length=hop, window=torch.hann_window(n_fft), return_complex=True).abs() ** 2
    db = 10 * torch.log10(power + 1e-12)
    db = (db - db.max()).clamp(min=-DYNAMIC_RANGE_DB)
    return db.numpy(), hop / sampling_rate


def window_label(row: dict) -> str:
    """What a window said: its generated text, or its best candidate label with the probability."""
    if "labels" in row:
        return f"{row['labels'][0]} ({row['scores'][0]:.0%})"
    return row["text"] or "(no answer)"


def timeline_lanes(rows: list[dict]) -> list[int]:
    """A lane per window such that windows sharing a lane never overlap (overlapping hops stack up)."""
    lane_ends: list[float] = []
    lanes = []
    for row in rows:
        lane = next((i for i, end in enumerate(lane_ends) if end <= row["start"] + 1e-9), len(lane_ends))
        if lane == len(lane_ends):
            lane_ends.append(row["end"])
        lane_ends[lane] = row["end"]
        lanes.append(lane)
    return lanes


def plot_windows(audio: np.ndarray, sampling_rate: int, rows: list[dict], title: str | None = None,
                 width: float = 12.0):
    """A figure: the spectrogram of `audio` (mono) on top, and under it one bar per window (`start`, `end` in
    seconds, and `text` or `labels`/`scores` as the pipeline and `naturelm infer` give them) with its answer written
    in it. Windows with the same answer share a colour."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    duration = len(audio) / sampling_rate
    end = max([duration] + [row["end"] for row in rows])
    lanes = timeline_lanes(rows)
    num_lanes = max(lanes, default=0) + 1
    figure = Figure(figsize=(width, 3.2 + 0.45 * num_lanes), layout="constrained")
    spec_axes, line_axes = figure.subplots(2, 1, sharex=True, height_ratios=[3.0, 0.55 * num_lanes])

    db, hop_seconds = spectrogram_db(audio, sampling_rate)
    image = spec_axes.imshow(db, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                             extent=(0, db.shape[1] * hop_seconds, 0, sampling_rate / 2000))
    spec_axes.set_ylabel("kHz")
    spec_axes.set_xlim(0, end)
    figure.colorbar(image, ax=spec_axes, label="dB", pad=0.01, aspect=15)
    if title:
        spec_axes.set_title(title, loc="left", fontsize=11)

    palette = colormaps["tab20"].colors
    colours: dict[str, tuple] = {}
    chars_per_second = width * 72 / 6.5 / max(end, 1e-9)  # ~6.5 pt per character at 9 pt
    for row, lane in zip(rows, lanes):
        label = window_label(row)
        colour = colours.setdefault(label, palette[(2 * len(colours)) % 20 + (len(colours) // 10) % 2])
        span = row["end"] - row["start"]
        line_axes.broken_barh([(row["start"], span)], (num_lanes - 1 - lane + 0.1, 0.8), facecolors=colour,
                              edgecolor="white", linewidth=1.0)
        room = int(span * chars_per_second * 0.9)
        if room >= 2:
            text = label if len(label) <= room else label[: room - 1] + "…"
            line_axes.text(row["start"] + span / 2, num_lanes - 1 - lane + 0.5, text, ha="center", va="center",
                           fontsize=9, clip_on=True)
    line_axes.set_ylim(0, num_lanes)
    line_axes.set_yticks([])
    line_axes.set_xlabel("time (s)")
    line_axes.set_ylabel("answers", rotation=0, ha="right", va="center")
    for side in ("top", "right", "left"):
        line_axes.spines[side].set_visible(False)
    return figure


def figure_png(figure, path, dpi: int = 110) -> None:
    """Saves a figure as a PNG file."""
    figure.savefig(path, format="png", dpi=dpi)


__all__ = ["figure_png", "plot_windows", "spectrogram_db", "timeline_lanes", "window_label"]
