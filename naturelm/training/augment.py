"""The paper's training augmentations on 16 kHz waveforms: background noise at a random SNR, mixup of detection clips
with merged label lists, and replacing a detection clip by noise with the answer "None".

Every function takes its randomness from a `numpy.random.Generator` passed in, so the caller decides the seeding
(see `naturelm.training.transform`: one generator per example, from the seed, the epoch and the example).
"""

import re

import numpy as np

NONE_ANSWER = "None"


def fit_length(waveform: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """Loops a short waveform, or cuts a random window of a long one, to exactly `length` samples."""
    if waveform.size == 0:
        return np.zeros(length, dtype=np.float32)
    if waveform.size < length:
        waveform = np.tile(waveform, -(-length // waveform.size))
    start = int(rng.integers(0, waveform.size - length + 1))
    return waveform[start : start + length]


def random_crop(waveform: np.ndarray, max_samples: int, rng: np.random.Generator | None) -> np.ndarray:
    """A random `max_samples` window of a longer waveform (its start without `rng`); shorter ones are kept."""
    if waveform.size <= max_samples:
        return waveform
    start = 0 if rng is None else int(rng.integers(0, waveform.size - max_samples + 1))
    return waveform[start : start + max_samples]


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`signal` plus `noise` scaled to sit `snr_db` dB below it (by mean power): torchaudio's `add_noise` in three
    numpy lines, so training needs no torchaudio (whose wheels pin one exact torch). `noise` must have the signal's
    length; silent noise (or a silent signal) leaves the signal unchanged."""
    if not np.any(noise) or not np.any(signal):
        return signal
    noise = noise.astype(np.float32, copy=False)
    energy_signal, energy_noise = np.sum(np.square(signal, dtype=np.float64)), np.sum(np.square(noise, dtype=np.float64))
    scale = np.sqrt(energy_signal / (energy_noise * 10.0 ** (snr_db / 10.0)))
    return (signal + np.float32(scale) * noise).astype(signal.dtype, copy=False)


def split_labels(answer: str) -> list[str]:
    """`"a, b"` -> `["a", "b"]`; the answer "None" is the empty list."""
    if answer.strip() == NONE_ANSWER:
        return []
    return [label.strip() for label in answer.split(",") if label.strip()]


def merge_labels(answer: str, other: str) -> str:
    """Union of two comma-separated label lists in order of appearance, "None" when both are empty."""
    labels = split_labels(answer)
    labels += [label for label in split_labels(other) if label not in labels]
    return ", ".join(labels) if labels else NONE_ANSWER


def _choices(instruction: str) -> tuple[str, list[str], bool] | None:
    """Splits a multiple-choice instruction `"Question? opt1, opt2, ..."` into its question, options and whether the
    options end with a full stop; None when there is no option list."""
    question, mark, options = instruction.rpartition("?")
    choices = [choice.strip() for choice in options.split(",") if choice.strip()] if mark else []
    if not choices:
        return None
    trailing_dot = choices[-1].endswith(".")
    if trailing_dot:
        choices[-1] = choices[-1][:-1]
    return question, choices, trailing_dot


def merge_options(instruction: str, answer: str, labels: list[str], rng: np.random.Generator) -> str:
    """If `instruction` is multiple choice and lists the original `answer` (each of its labels, or "None"), adds the
    `labels` missing from its options and shuffles them, so the merged answer stays among the choices. Any other
    instruction (an open question) is returned unchanged."""
    parsed = _choices(instruction)
    if parsed is None:
        return instruction
    question, choices, trailing_dot = parsed
    if not all(label in choices for label in (split_labels(answer) or [NONE_ANSWER])):
        return instruction
    choices += [label for label in labels if label not in choices]
    order = rng.permutation(len(choices))
    return f"{question}? " + ", ".join(choices[i] for i in order) + ("." if trailing_dot else "")


def mixup(
    waveform: np.ndarray,
    answer: str,
    instruction: str,
    partners: list[tuple[np.ndarray, str]],
    rng: np.random.Generator,
) -> tuple[np.ndarray, str, str]:
    """
    Mixes each partner clip into `waveform` with a weight `lam ~ Beta(1, 1)` clipped to [0.1, 0.8] (as the original
    training), merges their labels into the answer and, for multiple-choice instructions, into the options.

    Returns:
        `(waveform, answer, instruction)`.
    """
    original_answer = answer
    for partner_waveform, partner_answer in partners:
        partner = np.zeros_like(waveform)
        partner[: min(partner_waveform.size, waveform.size)] = partner_waveform[: waveform.size]
        lam = float(np.clip(rng.beta(1.0, 1.0), 0.1, 0.8))
        waveform = (lam * waveform + (1.0 - lam) * partner).astype(np.float32)
        answer = merge_labels(answer, partner_answer)
    if partners:
        instruction = merge_options(instruction, original_answer, split_labels(answer), rng)
    return waveform, answer, instruction


def matches(pattern: str | None, task: str) -> bool:
    return bool(pattern) and re.search(pattern, task) is not None


__all__ = [
    "NONE_ANSWER",
    "fit_length",
    "matches",
    "merge_labels",
    "merge_options",
    "mix_at_snr",
    "mixup",
    "random_crop",
    "split_labels",
]
