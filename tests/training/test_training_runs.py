"""Whole training runs of training/sft_naturelm.py on the tiny model: learning the clips' species, the stage 1 ->
stage 2 recipes, resuming after a hard kill, bad rows, and configuration errors."""

import json
import math
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import train_probe
import yaml
from training_helpers import (
    RECIPES,
    cpu_args,
    loss_history,
    probe_results,
    read_csv,
    run_probe,
    saved_weights,
    species_rows,
    subprocess_env,
    write_metadata,
)
from transformers import TrainerCallback

from naturelm.training import SKIP_REASONS, decode_audio


class StopWhenLearned(TrainerCallback):
    def __init__(self, loss: float):
        self.loss = loss

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and logs.get("loss", float("inf")) < self.loss:
            control.should_training_stop = True


def _parameters(model, part: str) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters() if part in name}


def test_training_learns_the_species_of_each_clip(tiny_model_dir, species_dataset, species_clips, tmp_path, one_thread):
    """Greedy answers become each clip's label with only LoRA, the Q-Former and BEATs training: gradients reach all
    three, and the prompts are identical, so the answer can only come from the audio."""
    parser = train_probe.sft.make_parser()
    args = parser.parse_args_and_config([
        "--model_name_or_path", str(tiny_model_dir), "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
        "--lora_dropout", "0.0", "--train_audio_encoder", "true", "--train_audio_projector", "true",
        "--datasets", str(species_dataset), "--random_crop", "false", "--learning_rate", "5e-3",
        "--lr_scheduler_type", "constant", "--max_steps", "120", "--logging_steps", "5",
        *cpu_args(tmp_path / "out", per_device_train_batch_size=len(species_clips)),
    ])
    trainer = train_probe.sft.build_trainer(*args)
    trainer.add_callback(StopWhenLearned(0.02))
    model, processor = trainer.model, trainer.processing_class
    before = {part: _parameters(model, part) for part in
              ("audio_tower", "audio_projector.qformer", "lora_", "language_model.layers.0.mlp", "embed_tokens")}
    trainer.train()

    losses = loss_history(trainer.state.log_history)
    assert losses[-1] < 0.02, losses
    for part, frozen in (("audio_tower", False), ("audio_projector.qformer", False), ("lora_", False),
                         ("language_model.layers.0.mlp", True), ("embed_tokens", True)):
        after = _parameters(model, part)
        changed = [name for name, value in before[part].items() if not torch.equal(value, after[name])]
        assert (not changed) if frozen else changed, (part, changed[:3])

    model.eval()
    for clip in species_clips:
        row = read_csv(species_dataset / "metadata.csv")[species_clips.index(clip)]
        prompt = trainer.data_collator.prompt("<Audio><AudioHere></Audio> " + row["instruction"])
        inputs = processor(text=prompt, audio=decode_audio(clip["path"]), sampling_rate=16000)
        with torch.no_grad():
            generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        answer = processor.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        assert answer == clip["label"]


def test_bad_rows_are_skipped_and_counted(tiny_model_dir, species_clips, tmp_path, one_thread):
    good = species_rows(species_clips)
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio at all")
    bad = [
        {**good[0], "file_name": str(not_audio)},  # unreadable audio
        {**good[1], "file_name": str(tmp_path / "missing.wav")},  # unreadable audio: no such file
        {**good[2], "output": ""},  # empty answer
        {"file_name": good[3]["file_name"], "instruction": good[3]["instruction"]},  # no output column in this row
        {"instruction": good[0]["instruction"], "output": good[0]["output"]},  # no audio in this row
        {**good[1], "instruction": "<AudioHere> and <AudioHere>?"},  # two placeholders for one clip
    ]
    dataset = write_metadata(tmp_path / "data", good + bad, name="metadata.jsonl")
    record = train_probe.run([
        "--model_name_or_path", str(tiny_model_dir), "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
        "--datasets", str(dataset), "--max_steps", "5", "--learning_rate", "1e-4",
        *cpu_args(tmp_path / "out", per_device_train_batch_size=2),
    ])
    assert len(record["batches"]) == 5 and all(len(batch) == 2 for batch in record["batches"])
    assert {answer for batch in record["batches"] for answer in batch} <= {clip["label"] for clip in species_clips}
    last = [entry for entry in record["log_history"] if "loss" in entry][-1]
    counts = {reason: last[f"skipped_rows/{reason}"] for reason in SKIP_REASONS}
    # One epoch (10 rows, 5 x 2) meets every bad row at least once; replacements may meet some again.
    assert counts["unreadable_audio"] >= 2 and counts["empty_answer"] >= 1
    assert counts["missing_column"] >= 2 and counts["bad_instruction"] >= 1
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_text_only_sft_options_are_refused(tiny_model_dir, species_dataset, tmp_path):
    parser = train_probe.sft.make_parser()
    args = parser.parse_args_and_config([
        "--model_name_or_path", str(tiny_model_dir), "--datasets", str(species_dataset), "--packing", "true",
        *cpu_args(tmp_path / "out"),
    ])
    with pytest.raises(ValueError, match="packing"):
        train_probe.sft.build_trainer(*args)


def test_unknown_configuration_keys_fail_at_start_with_their_name(tmp_path):
    recipe = yaml.safe_load((RECIPES / "finetune.yaml").read_text())
    parser = train_probe.sft.make_parser()

    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({**recipe, "learning_rat": 1e-4}))
    with pytest.raises(ValueError, match="learning_rat"):
        parser.parse_args_and_config(["--config", str(tmp_path / "typo.yaml")])

    datasets = [{"path": "data/mine", "weigth": 2.0}]
    (tmp_path / "dataset_typo.yaml").write_text(yaml.safe_dump({**recipe, "datasets": datasets}))
    with pytest.raises(ValueError, match="weigth"):
        parser.parse_args_and_config(["--config", str(tmp_path / "dataset_typo.yaml")])

    with pytest.raises(ValueError, match="--lora_rank"):
        parser.parse_args_and_config(["--config", str(RECIPES / "finetune.yaml"), "--lora_rank", "8"])

    # The script itself stops before loading anything, naming the key.
    result = subprocess.run(
        [sys.executable, str(train_probe.SCRIPT), "--config", str(tmp_path / "typo.yaml")],
        env=subprocess_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0 and "learning_rat" in result.stderr


def test_stage1_then_stage2_from_the_recipes(parity_dir, beats_checkpoint, mixed_task_dataset, noise_dir, tmp_path,
                                             one_thread):
    """Stage 1 builds a fresh model from BEATs + Llama and trains on classification rows only; stage 2 continues its
    output on every row. Both run the real recipes, shrunk to the tiny model and a few CPU steps."""
    tiny = ["--noise_dirs", str(noise_dir), "--max_steps", "2", "--per_device_train_batch_size", "2",
            "--warmup_steps", "0", "--shuffle_buffer_size", "4"]
    stage1 = train_probe.run([
        "--config", str(RECIPES / "stage1.yaml"), *tiny,
        "--text_model_name_or_path", str(parity_dir / "base_llama"),
        "--audio_encoder_name_or_path", str(beats_checkpoint),
        "--qformer_config", str(parity_dir / "qformer_config.json"),
        "--datasets", json.dumps({"path": str(mixed_task_dataset), "task_pattern": "classification"}),
        *cpu_args(tmp_path / "stage1"),
    ])
    assert len(stage1["batches"]) >= 2  # accelerate's loader reads one batch ahead of the training step
    assert {task for batch in stage1["tasks"] for task in batch} == {"common-name-classification"}
    recipe = yaml.safe_load((RECIPES / "stage1.yaml").read_text())
    adapter = json.loads((tmp_path / "stage1" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (recipe["lora_r"], recipe["lora_alpha"])
    assert (tmp_path / "stage1" / "adapter_model.safetensors").exists()

    stage2 = train_probe.run([
        "--config", str(RECIPES / "stage2.yaml"), *tiny,
        "--model_name_or_path", str(tmp_path / "stage1"),
        "--datasets", str(mixed_task_dataset),
        "--merged_output_dir", str(tmp_path / "stage2_merged"),
        *cpu_args(tmp_path / "stage2"),
    ])
    assert len(stage2["batches"]) >= 2 and all(math.isfinite(x) for x in loss_history(stage2["log_history"]))
    first, second = saved_weights(tmp_path / "stage1"), saved_weights(tmp_path / "stage2")
    assert first.keys() == second.keys()
    for part in ("adapter:", "audio_tower", "audio_projector"):  # stage 2 trained all three further
        assert any(not torch.equal(first[k], second[k]) for k in first if part in k), part
    assert not (tmp_path / "stage2_merged" / "adapter_model.safetensors").exists()
    assert "common-name-detection" in {task for batch in stage2["tasks"] for task in batch}  # no filter in stage 2
    _check_remote_code_load(tmp_path / "stage2", tmp_path / "stage2_merged", mixed_task_dataset)


def test_finetune_recipe_trains_only_the_adapter_and_evaluates(tiny_model_dir, species_dataset, tmp_path,
                                                               one_thread):
    recipe = yaml.safe_load((RECIPES / "finetune.yaml").read_text())
    assert not recipe["train_audio_encoder"] and not recipe["train_audio_projector"] and recipe["use_peft"]
    record = train_probe.run([
        "--config", str(RECIPES / "finetune.yaml"), "--model_name_or_path", str(tiny_model_dir),
        "--lora_r", "8", "--lora_alpha", "16", "--datasets", str(species_dataset), "--test_split_size", "0.5",
        "--num_train_epochs", "2", "--gradient_accumulation_steps", "1", "--per_device_eval_batch_size", "2",
        "--warmup_steps", "0", *cpu_args(tmp_path / "out", per_device_train_batch_size=2),
    ])
    assert [entry["epoch"] for entry in record["log_history"] if "eval_loss" in entry] == [1.0, 2.0]
    before, after = saved_weights(tiny_model_dir), saved_weights(tmp_path / "out")
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    assert changed and all(key.startswith("adapter:") for key in changed)


LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "naturelm" or name.startswith("naturelm."):
                raise ImportError("naturelm is blocked here")

    sys.meta_path.insert(0, _Block())
    import soundfile, torch
    from transformers import AutoModel, AutoProcessor, pipeline

    folder, merged, audio_path = sys.argv[1:4]
    audio, rate = soundfile.read(audio_path, dtype="float32")
    logits = []
    for path in (folder, merged):
        model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Which species?"}]}],
            add_generation_prompt=True, tokenize=False)
        batch = processor(text=prompt, audio=audio, sampling_rate=rate)
        with torch.no_grad():
            logits.append(model(**batch).logits[0, -1])
        model.generate(**batch, max_new_tokens=2)
        pipe = pipeline("naturelm-audio-text-to-text", model=path, trust_remote_code=True, max_new_tokens=2)
        windows = pipe({"array": audio, "sampling_rate": rate}, window_seconds=2.0)["windows"]
        print(json.dumps({"adapter": bool(getattr(model, "_hf_peft_config_loaded", False)),
                          "pipeline": type(pipe).__module__, "windows": len(windows),
                          "seconds": len(audio) / rate}))
    print(json.dumps({"max_difference": (logits[0] - logits[1]).abs().max().item()}))
    """
)


def assert_code_files_present(folder):
    """Every code file that the folder's config.json names (`auto_map`, `custom_pipelines`) and the processor's
    config names, and every sibling file they import, is in the folder."""
    config = json.loads((folder / "config.json").read_text())
    processor = json.loads((folder / "processor_config.json").read_text())
    named = [*config["auto_map"].values(), *processor["auto_map"].values(),
             *(task["impl"] for task in config["custom_pipelines"].values())]
    modules = {reference.split(".")[0] for reference in named}
    assert {"modeling_naturelm", "configuration_naturelm", "pipeline_naturelm"} <= modules
    for module in modules:
        code = (folder / f"{module}.py").read_text()
        imported = set(re.findall(r"^\s*from \.(\w+) import", code, re.MULTILINE))
        assert all((folder / f"{name}.py").exists() for name in imported), (module, imported)


def _check_remote_code_load(folder, merged, dataset):
    """The trained folder and its merged copy hold their code files, and load with AutoModel, AutoProcessor and
    `pipeline(...)` + trust_remote_code where `naturelm` cannot be imported, and give the same outputs."""
    assert_code_files_present(folder)
    assert_code_files_present(merged)
    audio = read_csv(dataset / "metadata.csv")[0]["file_name"]
    result = subprocess.run([sys.executable, "-c", LOADER, str(folder), str(merged), audio], env=subprocess_env(),
                            capture_output=True, text=True, timeout=300, cwd=folder.parent)
    assert result.returncode == 0, result.stderr[-4000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["adapter"] for line in lines[:2]] == [True, False]
    for line in lines[:2]:  # the pipeline came from the folder's own code and windowed the whole clip
        assert line["pipeline"].startswith("transformers_modules")
        assert line["windows"] == math.ceil(line["seconds"] / 2)
    assert lines[2]["max_difference"] < 1e-4


def test_a_killed_run_resumes_to_the_same_weights(tiny_model_dir, mixed_task_dataset, noise_dir, tmp_path, one_thread):
    """Killed (SIGKILL) right after its step-4 checkpoint and resumed, a run ends with the weights, losses and batches
    of an uninterrupted one: data order, augmentations, dropout and optimizer state all carry over."""
    common = [
        "--model_name_or_path", str(tiny_model_dir), "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
        "--lora_dropout", "0.1", "--train_audio_encoder", "true", "--datasets", str(mixed_task_dataset),
        "--noise_dirs", str(noise_dir), "--noise_prob", "0.5", "--mixup_prob", "0.5", "--noise_replace_prob", "0.3",
        "--max_steps", "6", "--learning_rate", "1e-3", "--seed", "3",
    ]
    settings = dict(per_device_train_batch_size=2, save_strategy="steps", save_steps=2)
    whole = train_probe.run([*common, *cpu_args(tmp_path / "whole", **settings)])

    killed = run_probe([*common, *cpu_args(tmp_path / "resumed", **settings)], tmp_path / "probe",
                       NATURELM_PROBE_KILL_AFTER_SAVE=4)
    assert killed.returncode == -9, killed.stderr[-3000:]
    checkpoint = tmp_path / "resumed" / "checkpoint-4"
    assert (checkpoint / "trainer_state.json").exists()
    # Checkpoints are the model's remote-code folder, adapter beside the base weights.
    assert {"modeling_naturelm.py", "processing_naturelm.py", "processor_config.json", "config.json",
            "model.safetensors", "adapter_model.safetensors"} <= {path.name for path in checkpoint.iterdir()}
    assert_code_files_present(checkpoint)
    assert not (tmp_path / "resumed" / "model.safetensors").exists() and not probe_results(tmp_path / "probe")

    resumed = train_probe.run([*common, *cpu_args(tmp_path / "resumed", resume_from_checkpoint="last", **settings)])
    assert resumed["batches"] == whole["batches"][4:]
    assert loss_history(resumed["log_history"])[-2:] == pytest.approx(loss_history(whole["log_history"])[-2:],
                                                                       rel=1e-6)
    expected, actual = saved_weights(tmp_path / "whole"), saved_weights(tmp_path / "resumed")
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert torch.allclose(actual[key], value, rtol=1e-5, atol=1e-7), key


def test_qlora_recipe_trains_the_adapter_on_a_4bit_language_model(tiny_model_dir, species_dataset, tmp_path,
                                                                  one_thread):
    """finetune_qlora.yaml on the tiny model, two steps on CPU: the language model's Linears are 4-bit, the audio
    side and lm_head are not; only the LoRA weights move, and the 4-bit base stays as it was read."""
    import bitsandbytes as bnb

    recipe = yaml.safe_load((RECIPES / "finetune_qlora.yaml").read_text())
    assert recipe["load_in_4bit"] and recipe["use_peft"] and recipe["gradient_checkpointing"]
    parser = train_probe.sft.make_parser()
    args = parser.parse_args_and_config([
        "--config", str(RECIPES / "finetune_qlora.yaml"), "--model_name_or_path", str(tiny_model_dir),
        "--lora_r", "8", "--lora_alpha", "16", "--datasets", str(species_dataset), "--test_split_size", "0.5",
        "--eval_strategy", "no", "--max_steps", "2", "--gradient_accumulation_steps", "1", "--warmup_steps", "0",
        "--learning_rate", "1e-2",
        "--optim", "adamw_torch",  # the recipe's paged 8-bit AdamW pages through CUDA memory
        *cpu_args(tmp_path / "out", per_device_train_batch_size=2),
    ])
    trainer = train_probe.sft.build_trainer(*args)
    model = trainer.model
    four_bit = {name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}
    assert four_bit and all(name.startswith("model.language_model.") for name in four_bit)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in [*model.model.audio_tower.modules(),
                                                               *model.model.audio_projector.modules(), model.lm_head])
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    assert trainable and all(".lora_" in name for name in trainable)
    # TRL's SFTTrainer keeps a QLoRA adapter in bf16, as the QLoRA paper does
    assert {model.get_parameter(name).dtype for name in trainable} == {torch.bfloat16}
    lora, base = _parameters(model, "lora_"), _parameters(model, "language_model.layers.0.mlp")
    trainer.train()

    losses = loss_history(trainer.state.log_history)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    after = _parameters(model, "lora_")
    assert any(not torch.equal(value, after[name]) for name, value in lora.items())
    assert all(torch.equal(value, _parameters(model, "language_model.layers.0.mlp")[name]) for name, value in base.items())
