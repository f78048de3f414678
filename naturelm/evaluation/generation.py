"""The one place where the model runs during an evaluation: BEANS-Zero rows through the inference pipeline's batched
generation (each clip already cut or padded to its component's length by the caller's processor)."""

from collections.abc import Sequence

import numpy as np
import torch

from feature_extraction_naturelm import to_mono_16k
from modeling_naturelm import NatureLMForConditionalGeneration
from pipeline_naturelm import AudioWindow
from pipeline_naturelm import generate_answers as pipeline_generate
from processing_naturelm import NatureLMProcessor

def generate_answers(
    model: NatureLMForConditionalGeneration,
    processor: NatureLMProcessor,
    prompts: Sequence[str],
    clips: Sequence[np.ndarray],
    sampling_rate: int,
    batch_size: int = 8,
    **generate_kwargs,
) -> list[str]:
    """
    Answers one prompt per clip.

    Args:
        model ([`NatureLMForConditionalGeneration`]): the model, in eval mode, on its device.
        processor ([`NatureLMProcessor`]): its processor (its feature extractor fixes the clip length).
        prompts (`Sequence[str]`): chat-formatted prompts, one `<AudioHere>` each.
        clips (`Sequence[np.ndarray]`): mono float waveforms, one per prompt.
        sampling_rate (`int`): the clips' sampling rate.
        batch_size (`int`, defaults to 8): prompts per `generate` call.
        generate_kwargs: overrides of the checkpoint's generation config, which decodes as the original BEANS-Zero
            run did (beam search with 2 beams, no sampling, up to 300 new tokens, no repetition or length penalty;
            its `min_length: 1` is a no-op for a prompt of several tokens).

    Returns:
        `list[str]`: the decoded answers (special tokens skipped, text otherwise as generated).
    """
    if len(prompts) != len(clips):
        raise ValueError(f"Got {len(prompts)} prompts but {len(clips)} clips.")
    rate = processor.feature_extractor.sampling_rate
    windows = [AudioWindow(0, 0.0, 0.0, to_mono_16k(clip, sampling_rate, rate), prompt)
               for prompt, clip in zip(prompts, clips)]
    answers: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            answers += pipeline_generate(model, processor, windows[start : start + batch_size], **generate_kwargs)
    return answers


__all__ = ["generate_answers"]
