"""The paper's augmentations as pure functions of waveforms, answers and a generator."""

import numpy as np
import pytest

from naturelm.training.audio import decode_audio
from naturelm.training.augment import NONE_ANSWER, fit_length, merge_labels, merge_options, mix_at_snr, mixup


@pytest.fixture(scope="module")
def clips(species_clips) -> list[np.ndarray]:
    return [decode_audio(clip["path"])[:160000] for clip in species_clips]


@pytest.mark.parametrize("snr_db", [-10.0, 0.0, 25.0])
def test_noise_is_mixed_at_the_requested_snr(clips, noise_dir, snr_db):
    signal = clips[0]
    noise = fit_length(decode_audio(next(noise_dir.iterdir())), signal.size, np.random.default_rng(0))
    mixed = mix_at_snr(signal, noise, snr_db)
    added = mixed.astype(np.float64) - signal
    measured = 10 * np.log10(np.mean(signal.astype(np.float64) ** 2) / np.mean(added**2))
    assert measured == pytest.approx(snr_db, abs=1e-3)
    assert np.array_equal(mix_at_snr(signal, np.zeros_like(signal), snr_db), signal)  # silent noise: no change


def test_noise_mix_matches_torchaudio_add_noise(clips, noise_dir):
    """The numpy mix is torchaudio's `add_noise` (the reference; torchaudio is a test-only dependency)."""
    import torch
    import torchaudio

    signal = clips[1]
    noise = fit_length(decode_audio(next(noise_dir.iterdir())), signal.size, np.random.default_rng(1))
    reference = torchaudio.functional.add_noise(
        torch.from_numpy(signal)[None], torch.from_numpy(noise)[None], torch.tensor([3.0])
    )[0].numpy()
    mixed = mix_at_snr(signal, noise, 3.0)
    assert mixed.dtype == signal.dtype
    # torchaudio sums the energies in fp32, the numpy lines in fp64: the added noise agrees to fp32 summation error
    added, reference_added = mixed.astype(np.float64) - signal, reference.astype(np.float64) - signal
    np.testing.assert_allclose(added, reference_added, rtol=1e-4, atol=1e-4 * np.abs(reference_added).max())


def test_fit_length_loops_short_and_crops_long_noise():
    rng = np.random.default_rng(0)
    short = np.arange(5, dtype=np.float32)
    looped = fit_length(short, 12, rng)  # the repeated noise, from a random offset
    assert np.array_equal(looped, short[(int(looped[0]) + np.arange(12)) % 5])
    long = np.arange(100, dtype=np.float32)
    window = fit_length(long, 10, rng)
    assert window.size == 10 and np.array_equal(window, long[int(window[0]) : int(window[0]) + 10])


def test_merged_labels_are_a_union_and_none_means_empty():
    assert merge_labels("Gray Wolf", "Lazuli Bunting, Gray Wolf") == "Gray Wolf, Lazuli Bunting"
    assert merge_labels(NONE_ANSWER, "Gray Wolf") == "Gray Wolf"
    assert merge_labels("Gray Wolf", NONE_ANSWER) == "Gray Wolf"
    assert merge_labels(NONE_ANSWER, NONE_ANSWER) == NONE_ANSWER


def test_options_of_a_multiple_choice_instruction_take_the_merged_labels():
    rng = np.random.default_rng(0)
    question = "Which of these, if any, are present in the audio recording? Gray Wolf, Green Treefrog, None."
    merged = merge_options(question, "Gray Wolf", ["Gray Wolf", "American Robin"], rng)
    head, _, options = merged.rpartition("? ")
    assert head == question.rpartition("? ")[0] and options.endswith(".")
    assert sorted(options[:-1].split(", ")) == ["American Robin", "Gray Wolf", "Green Treefrog", "None"]
    # An open question, or options that do not list the original answer, stay as they are.
    open_question = "What is the common name for the focal species in the audio? Answer:"
    assert merge_options(open_question, "Gray Wolf", ["Gray Wolf", "American Robin"], rng) == open_question
    assert merge_options(question, "Lazuli Bunting", ["Lazuli Bunting", "Gray Wolf"], rng) == question


def test_mixup_blends_clips_with_a_bounded_weight_and_merges_answers(clips):
    rng = np.random.default_rng(1)
    question = "Which of these, if any, are present in the audio recording? Gray Wolf, None."
    mixed, answer, instruction = mixup(clips[0], "Gray Wolf", question, [(clips[1], "Green Treefrog")], rng)
    # mixed = lam * a + (1 - lam) * b, the partner zero-padded or cut to the clip: recover lam by least squares.
    a, b = clips[0].astype(np.float64), np.zeros(clips[0].size)
    b[: clips[1].size] = clips[1][: a.size]
    lam = float(np.dot(mixed - b, a - b) / np.dot(a - b, a - b))
    assert 0.1 <= lam <= 0.8
    assert np.allclose(mixed, lam * a + (1 - lam) * b, atol=1e-5)
    assert answer == "Gray Wolf, Green Treefrog"
    assert set(instruction.rpartition("? ")[2].rstrip(".").split(", ")) == {"Gray Wolf", "Green Treefrog", "None"}
    unchanged = mixup(clips[0], "Gray Wolf", question, [], rng)
    assert np.array_equal(unchanged[0], clips[0]) and unchanged[1:] == ("Gray Wolf", question)
