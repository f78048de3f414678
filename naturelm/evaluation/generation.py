"""The one place where the model runs during an evaluation: one batch of BEANS-Zero rows through the inference
engine's batch step (`answer_windows`), each clip already cut or padded to its component's length by the caller's
processor; the caller (`runner.run_beans_zero`) forms the batches."""

from collections.abc import Sequence

import numpy as np

from audio_naturelm import to_mono
from modeling_naturelm import NatureLMForConditionalGeneration
from ..engine import AudioWindow, answer_windows, generation_task
from processing_naturelm import NatureLMProcessor


def generate_answers(
    model: NatureLMForConditionalGeneration,
    processor: NatureLMProcessor,
    prompts: Sequence[str],
    clips: Sequence[np.ndarray],
    sampling_rate: int,
    **generate_kwargs,
) -> list[str]:
    """
    Answers one prompt per clip, all in one batch.

    Args:
        model ([`NatureLMForConditionalGeneration`]): the model, in eval mode, on its device.
        processor ([`NatureLMProcessor`]): its processor (its feature extractor fixes the clip length).
        prompts (`Sequence[str]`): chat-formatted prompts, one `<AudioHere>` each.
        clips (`Sequence[np.ndarray]`): mono float waveforms, one per prompt.
        sampling_rate (`int`): the clips' sampling rate.
        generate_kwargs: overrides of the checkpoint's generation config, which decodes as the original BEANS-Zero
            run did (beam search with 2 beams, no sampling, up to 300 new tokens, no repetition or length penalty;
            its `min_length: 1` is a no-op for a prompt of several tokens).

    Returns:
        `list[str]`: the decoded answers (special tokens skipped, text otherwise as generated).
    """
    if len(prompts) != len(clips):
        raise ValueError(f"Got {len(prompts)} prompts but {len(clips)} clips.")
    rate = processor.feature_extractor.sampling_rate
    windows = []
    for index, (prompt, clip) in enumerate(zip(prompts, clips)):
        samples = to_mono(clip, sampling_rate, rate, name=f"clip {index}")  # an `AudioError` (a ValueError) if bad
        windows.append(AudioWindow(0.0, len(samples) / rate, samples, prompt))
    rows = answer_windows(model, processor, generation_task(strip=False, **generate_kwargs), windows)
    return [row["text"] for row in rows]

__all__ = ["generate_answers"]
