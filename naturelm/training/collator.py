"""Batches of training examples, built by the NatureLM processor (labels -100 everywhere but the answer)."""

from dataclasses import dataclass

import torch
from transformers.feature_extraction_utils import BatchFeature

from processing_naturelm import NatureLMProcessor
from .audio import SAMPLING_RATE
from .transform import SKIP_REASONS


@dataclass
class NatureLMDataCollator:
    """
    Turns examples of [`TextAudioTransform`] (`audio` at 16 kHz, `instruction` with one `<AudioHere>`, `output`) into
    model inputs: the instruction goes through the processor's chat template as the user turn, the answer (plus
    `<|end_of_text|>`) is the only labelled span, rows are right-padded.

    Args:
        processor ([`NatureLMProcessor`]): tokenizer, feature extractor and prompt format of the model.
        report_skipped (`bool`, defaults to `True`): add `skipped_rows` (`(batch, len(SKIP_REASONS))` counts of rows
            skipped before each example) for [`NatureLMSFTTrainer`] to log; turn off for a plain `Trainer`.
    """

    processor: NatureLMProcessor
    report_skipped: bool = True

    def prompt(self, instruction: str) -> str:
        return self.processor.apply_chat_template(
            [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False
        )

    def __call__(self, examples: list[dict]) -> BatchFeature:
        batch = self.processor(
            text=[self.prompt(example["instruction"]) for example in examples],
            audio=[example["audio"] for example in examples],
            sampling_rate=SAMPLING_RATE,
            answers=[example["output"] for example in examples],
        )
        if self.report_skipped:
            counts = [example.get("skipped_rows") or [0] * len(SKIP_REASONS) for example in examples]
            batch["skipped_rows"] = torch.tensor(counts, dtype=torch.long)
        return batch


__all__ = ["NatureLMDataCollator"]
