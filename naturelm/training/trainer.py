"""`SFTTrainer` for NatureLM: logs the rows the data pipeline skipped and moves the augmentations to each new epoch.
Everything else (optimisation, DeepSpeed, checkpoints, resuming) is TRL's and transformers' own."""

import math

import torch
from transformers import TrainerCallback
from trl import SFTTrainer

from .transform import SKIP_REASONS, TextAudioTransform


class AugmentationEpochCallback(TrainerCallback):
    """Tells the training transform which epoch starts, so each epoch draws new augmentations (and a resumed run
    the same ones as the run it continues)."""

    def __init__(self, transform: TextAudioTransform):
        self.transform = transform

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.transform.set_epoch(math.floor(state.epoch or 0))


class NatureLMSFTTrainer(SFTTrainer):
    """
    [`trl.SFTTrainer`] with two additions for audio data:
    - the `skipped_rows` counts that [`NatureLMDataCollator`] puts in each batch are taken out before the forward and
      logged, summed over processes since the start of training, as `skipped_rows/<reason>`;
    - with `train_transform`, an [`AugmentationEpochCallback`] advances its epoch.

    Use it with `SFTConfig(remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})`, the
    collator, and the processor as `processing_class`.
    """

    def __init__(self, *args, train_transform: TextAudioTransform | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._skipped_rows = torch.zeros(len(SKIP_REASONS), dtype=torch.long)
        if train_transform is not None:
            if self.args.dataloader_persistent_workers and train_transform.augments:
                raise ValueError("dataloader_persistent_workers keeps the first epoch's augmentations in the workers;"
                                 " turn it off when augmenting.")
            self.add_callback(AugmentationEpochCallback(train_transform))

    def _prepare_inputs(self, inputs):
        skipped = inputs.pop("skipped_rows", None)
        if skipped is not None and self.model.training:
            self._skipped_rows += skipped.detach().sum(0).cpu()
        return super()._prepare_inputs(inputs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # training logs come on every process at once, so the reduction is safe here
            totals = self.accelerator.reduce(self._skipped_rows.to(self.args.device), reduction="sum")
            logs.update({f"skipped_rows/{reason}": int(n) for reason, n in zip(SKIP_REASONS, totals.tolist())})
        super().log(logs, start_time)


__all__ = ["AugmentationEpochCallback", "NatureLMSFTTrainer"]
