"""The one place where the model runs during an evaluation. `generate_answers` is deliberately small so that it can
be swapped for the batched inference pipeline without touching the rest of the evaluation."""

from collections.abc import Sequence

import numpy as np
import torch

from ..modeling_naturelm import NatureLMForConditionalGeneration
from ..processing_naturelm import NatureLMProcessor

# The original BEANS-Zero run (NatureLM-audio `configs/inference.yml`): beam search with 2 beams, no sampling, up to
# 300 new tokens, no repetition or length penalty. Its `min_length: 1` is a no-op for a prompt of several tokens.
DEFAULT_MAX_NEW_TOKENS = 300
DEFAULT_NUM_BEAMS = 2


def generate_answers(
    model: NatureLMForConditionalGeneration,
    processor: NatureLMProcessor,
    prompts: Sequence[str],
    clips: Sequence[np.ndarray],
    sampling_rate: int,
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    num_beams: int = DEFAULT_NUM_BEAMS,
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
        max_new_tokens (`int`, defaults to 300), num_beams (`int`, defaults to 2): greedy beam search settings.

    Returns:
        `list[str]`: the decoded answers (special tokens skipped, text otherwise as generated).
    """
    if len(prompts) != len(clips):
        raise ValueError(f"Got {len(prompts)} prompts but {len(clips)} clips.")
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = processor(
            text=list(prompts[start : start + batch_size]),
            audio=list(clips[start : start + batch_size]),
            sampling_rate=sampling_rate,
        ).to(model.device)
        with torch.inference_mode():
            generated = model.generate(
                **batch, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False
            )
        answers += processor.batch_decode(generated[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return answers


__all__ = ["DEFAULT_MAX_NEW_TOKENS", "DEFAULT_NUM_BEAMS", "generate_answers"]
