# Copyright 2026 The NatureLM-audio HF authors. Licensed under the MIT License.
"""
Supervised fine-tuning of NatureLM-audio with TRL's `SFTTrainer`: peft LoRA on Llama, BEATs and the Q-Former trained
per the recipe, DeepSpeed ZeRO optional. Arguments come from a YAML recipe, overridable on the command line.

```bash
# one GPU: your recordings (a folder with metadata.csv), LoRA only
accelerate launch --config_file training/accelerate/1gpu.yaml training/sft_naturelm.py \
    --config training/recipes/finetune.yaml --datasets data/my_recordings --output_dir outputs/my-model
# 8 GPUs, ZeRO-2: the paper's stage 1 (stage2.yaml continues from its output)
accelerate launch --config_file training/accelerate/8gpu.yaml training/sft_naturelm.py \
    --config training/recipes/stage1.yaml --deepspeed training/deepspeed/zero2.json
# CPU, 2 processes, ZeRO-3 (tests, debugging)
accelerate launch --config_file training/accelerate/cpu.yaml training/sft_naturelm.py \
    --config training/recipes/finetune.yaml --deepspeed training/deepspeed/zero3.json \
    --use_cpu true --bf16 false --dtype float32 --datasets data/my_recordings
```
"""

import os

from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, SFTConfig

from naturelm import NatureLMForConditionalGeneration
from naturelm.training import (
    AudioDataArguments,
    NatureLMArguments,
    NatureLMDataCollator,
    NatureLMParser,
    NatureLMSFTTrainer,
    configure_trainable_parameters,
    load_model_for_training,
    load_training_datasets,
    setup_cpu_distributed,
)


def make_parser() -> NatureLMParser:
    # The data arguments come before SFTConfig so that a bad dataset entry is reported before any device check.
    return NatureLMParser((NatureLMArguments, AudioDataArguments, SFTConfig, ModelConfig))


def build_trainer(naturelm_args, data_args, training_args, model_args) -> NatureLMSFTTrainer:
    # Audio rows are batched by our collator: TRL must neither tokenize the dataset nor drop its columns.
    training_args.remove_unused_columns = False
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    training_args.max_length = None  # never truncate through an audio span

    model, processor = load_model_for_training(model_args, naturelm_args)
    configure_trainable_parameters(model, model_args, naturelm_args)
    train_dataset, eval_dataset, train_transform = load_training_datasets(data_args, seed=training_args.seed)
    return NatureLMSFTTrainer(
        model=model,
        args=training_args,
        data_collator=NatureLMDataCollator(processor),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        train_transform=train_transform,
    )


def train_and_save(trainer: NatureLMSFTTrainer, naturelm_args, training_args) -> None:
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):  # the latest checkpoint, if there is one
        resume = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
    trainer.train(resume_from_checkpoint=resume)

    # A remote-code folder: base weights, the LoRA adapter beside them, processor and code files.
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.wait_for_everyone()
    if naturelm_args.merged_output_dir and trainer.accelerator.is_main_process:
        merged = NatureLMForConditionalGeneration.from_pretrained(training_args.output_dir)
        if getattr(merged, "_hf_peft_config_loaded", False):
            merged.merge_adapter_into_weights()
        merged.save_pretrained(naturelm_args.merged_output_dir)
        trainer.processing_class.save_pretrained(naturelm_args.merged_output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub()
    trainer.end()


def main(naturelm_args, data_args, training_args, model_args) -> None:
    trainer = build_trainer(naturelm_args, data_args, training_args, model_args)
    train_and_save(trainer, naturelm_args, training_args)


if __name__ == "__main__":
    parser = make_parser()
    setup_cpu_distributed(parser)
    main(*parser.parse_args_and_config())
