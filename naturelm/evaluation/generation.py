"""The one place where the model runs during an evaluation: BEANS-Zero rows through the inference engine
(`run_recordings`), each clip already cut or padded to its component's length by the caller's processor."""

from collections.abc import Sequence

import numpy as np

from audio_naturelm import to_mono
from modeling_naturelm import NatureLMForConditionalGeneration
from ..engine import Recording, generation_task, run_recordings
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
    recordings = []
    for index, (prompt, clip) in enumerate(zip(prompts, clips)):
        samples = to_mono(clip, sampling_rate, rate, name=f"clip {index}")
        # one window per clip: the processor cuts or pads it to the component's length
        recordings.append(Recording(f"clip {index}", lambda s=samples: [(0.0, len(s) / rate, s)], prompt))
    task = generation_task(strip=False, **generate_kwargs)
    results = list(run_recordings(model, processor, recordings, task, batch_size))
    for result in results:
        if result.error is not None:
            raise ValueError(f"{result.key} {result.error}.")
    return [result.rows[0]["text"] for result in results]


__all__ = ["generate_answers"]
