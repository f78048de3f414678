"""Helpers of the training tests: small text-audio datasets, the tiny training model, and runners for the training
script in a separate process (which can be launched on several ranks, or killed)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from naturelm.testing_utils import tiny_model_and_processor

REPO = Path(__file__).resolve().parents[2]
# The labels the species tests give their clips (the longest shared recordings, longest first): the tests' own names,
# which the tiny model learns from the audio; they need not be what the recordings hold.
LABELS = ("Common Loon", "Wood Frog", "Red Fox", "Barn Owl")
SCRIPT = REPO / "training" / "sft_naturelm.py"
PROBE = Path(__file__).with_name("train_probe.py")
RECIPES = REPO / "training" / "recipes"
INSTRUCTION = "Which species is calling? Answer:"
DETECTION = "Which of these, if any, are present in the audio recording? {}, None."


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_metadata(folder: Path, rows: list[dict], name: str = "metadata.csv") -> Path:
    """A local dataset folder whose metadata table (CSV or JSONL, by `name`) holds `rows`."""
    folder.mkdir(parents=True, exist_ok=True)
    if name.endswith(".csv"):
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with open(folder / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    else:
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def species_rows(clips: list[dict], task: str = "common-name-classification") -> list[dict]:
    return [{"file_name": c["path"], "instruction": INSTRUCTION, "output": c["label"], "task": task} for c in clips]


def detection_rows(clips: list[dict]) -> list[dict]:
    labels = ", ".join(c["label"] for c in clips)
    return [{"file_name": c["path"], "instruction": DETECTION.format(labels), "output": c["label"],
             "task": "common-name-detection"} for c in clips]


def tiny_training_model(tokenizer_dir, seed: int = 0):
    """The tiny random NatureLM without dropout, its LM head scaled to the confident logits of a trained LM head (a
    random head at the initialiser's scale cannot put most of the probability on any token, whatever the input)."""
    model, processor = tiny_model_and_processor(
        tokenizer_dir,
        seed=seed,
        lora_dropout=0.0,
        qformer_config=dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, encoder_hidden_size=32,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
    )
    with torch.no_grad():
        model.lm_head.weight.mul_(25.0)
    return model, processor


def cpu_args(output_dir: Path, **overrides) -> list[str]:
    """Command-line overrides that make any recipe run on the tiny model on CPU in seconds."""
    args = {
        "output_dir": output_dir, "use_cpu": "true", "bf16": "false", "dtype": "float32", "report_to": "none",
        "dataloader_num_workers": 0, "gradient_checkpointing": "false", "logging_steps": 1, "save_strategy": "no",
        "disable_tqdm": "true",
    }
    args.update(overrides)
    return [item for key, value in args.items() for item in (f"--{key}", str(value))]


def subprocess_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))  # DeepSpeed's JIT ops, kept
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1"})
    env.update({key: str(value) for key, value in extra.items()})
    return env


def run_probe(args: list[str], probe_dir: Path, launcher: list[str] | None = None, timeout: int = 400,
              **env) -> subprocess.CompletedProcess:
    """Runs the training script through train_probe.py: one process, or under `launcher` (accelerate launch ...)."""
    probe_dir.mkdir(parents=True, exist_ok=True)
    command = [*(launcher or [sys.executable]), str(PROBE), *args]
    return subprocess.run(command, env=subprocess_env(NATURELM_PROBE_DIR=probe_dir, **env), capture_output=True,
                          text=True, timeout=timeout)


def probe_results(probe_dir: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(probe_dir.glob("rank*.json"))]


def saved_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved NatureLM folder: the base weights and the adapter's."""
    weights = load_file(folder / "model.safetensors")
    adapter = folder / "adapter_model.safetensors"
    if adapter.exists():
        weights.update({f"adapter:{key}": value for key, value in load_file(adapter).items()})
    return weights


def loss_history(log_history: list[dict]) -> list[float]:
    return [entry["loss"] for entry in log_history if "loss" in entry]
