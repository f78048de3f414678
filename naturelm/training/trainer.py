"""`SFTTrainer` for NatureLM: logs the rows the data pipeline skipped and moves the augmentations to each new epoch.
Everything else (optimisation, DeepSpeed, checkpoints, resuming) is TRL's and transformers' own."""

import json
import math
import os

import torch
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import TrainerCallback
from transformers.utils import ADAPTER_SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from trl import SFTTrainer

from .transform import SKIP_REASONS, TextAudioTransform


class AugmentationEpochCallback(TrainerCallback):
    """Tells the training transform which epoch starts, so each epoch draws new augmentations (and a resumed run
    the same ones as the run it continues)."""

    def __init__(self, transform: TextAudioTransform):
        self.transform = transform

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.transform.set_epoch(math.floor(state.epoch or 0))


def load_checkpoint_weights(model: torch.nn.Module, folder: str) -> None:
    """Loads a folder written by `NatureLMForConditionalGeneration.save_pretrained` into an existing model with its
    LoRA adapter attached: base weights under their plain names (mapped back onto the adapter-wrapped layers) and the
    peft adapter beside them. Values are copied into the model's tensors, which keep their dtypes."""
    index = os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        with open(index) as handle:
            files = sorted(set(json.load(handle)["weight_map"].values()))
    else:
        files = [SAFE_WEIGHTS_NAME]
    base = {key: value for name in files for key, value in load_file(os.path.join(folder, name)).items()}
    wrapped = {key.replace(".base_layer.", "."): key for key in model.state_dict() if ".base_layer." in key}
    result = model.load_state_dict({wrapped.get(key, key): value for key, value in base.items()}, strict=False)
    missing = [key for key in result.missing_keys if ".lora_" not in key]
    if missing or result.unexpected_keys:
        raise ValueError(f"{folder} does not fit the model: missing {missing[:10]}, unexpected "
                         f"{result.unexpected_keys[:10]}")
    adapter = load_file(os.path.join(folder, ADAPTER_SAFE_WEIGHTS_NAME))
    adapter = {key.removeprefix("base_model.model."): value for key, value in adapter.items()}
    adapter_name = model.active_adapters()[0]
    result = set_peft_model_state_dict(model, adapter, adapter_name=adapter_name)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"{folder}'s adapter does not fit the model: unexpected {result.unexpected_keys[:10]}")


def _check_arguments(args) -> None:
    """Audio batches come from the collator, whole: the text-only SFT options cannot apply."""
    unsupported = [name for name in ("packing", "padding_free", "assistant_only_loss", "completion_only_loss")
                   if getattr(args, name, None)]
    if unsupported:
        raise ValueError(f"{unsupported} do not apply to NatureLM's audio batches; turn them off.")
    if args.remove_unused_columns or not (args.dataset_kwargs or {}).get("skip_prepare_dataset"):
        raise ValueError("NatureLM needs remove_unused_columns=False and dataset_kwargs={'skip_prepare_dataset': True}:"
                         " the collator batches the raw audio rows.")


class NatureLMSFTTrainer(SFTTrainer):
    """
    [`trl.SFTTrainer`] with two additions for audio data:
    - the `skipped_rows` counts that [`NatureLMDataCollator`] puts in each batch are taken out before the forward and
      logged, summed over processes since this run started (a resumed run counts afresh), as `skipped_rows/<reason>`;
    - with `train_transform`, an [`AugmentationEpochCallback`] advances its epoch;
    - resuming without DeepSpeed reads checkpoints in the model's own layout (base weights + peft adapter), which the
      Trainer's generic loader would only half restore (DeepSpeed resumes from its own engine checkpoint).

    Use it with `SFTConfig(remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})`, the
    collator, and the processor as `processing_class`.
    """

    def __init__(self, model, args, *positional, train_transform: TextAudioTransform | None = None, **kwargs):
        _check_arguments(args)
        super().__init__(model, args, *positional, **kwargs)
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

    def _uses_adapter_layout(self, model: torch.nn.Module, folder: str) -> bool:
        return bool(getattr(model, "_hf_peft_config_loaded", False)) and os.path.isfile(
            os.path.join(folder, ADAPTER_SAFE_WEIGHTS_NAME)
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        model = self.model if model is None else model
        if self._uses_adapter_layout(model, resume_from_checkpoint):
            load_checkpoint_weights(model, resume_from_checkpoint)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if not self.is_deepspeed_enabled and self._uses_adapter_layout(self.model, best):
            load_checkpoint_weights(self.model, best)
        else:
            super()._load_best_model()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # training logs come on every process at once, so the reduction is safe here
            totals = self.accelerator.reduce(self._skipped_rows.to(self.args.device), reduction="sum")
            logs.update({f"skipped_rows/{reason}": int(n) for reason, n in zip(SKIP_REASONS, totals.tolist())})
        super().log(logs, start_time)


__all__ = ["AugmentationEpochCallback", "NatureLMSFTTrainer", "load_checkpoint_weights"]
