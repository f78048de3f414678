"""The training script really runs multi-process: DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU processes (gloo), launched by
`accelerate launch` with the shipped CPU config, against a single-process run on the same global batch."""

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from training_helpers import REPO, cpu_args, loss_history, probe_results, run_probe, saved_weights

ACCELERATE = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
              str(REPO / "training" / "accelerate" / "cpu.yaml")]
STEPS = 3
GLOBAL_BATCH = 4


def _args(tiny_model_dir, dataset, output_dir, per_device: int, **extra) -> list[str]:
    return [
        "--model_name_or_path", str(tiny_model_dir), "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
        "--lora_dropout", "0.0", "--train_audio_encoder", "true", "--datasets", str(dataset),
        "--random_crop", "false", "--learning_rate", "1e-3", "--max_steps", str(STEPS), "--seed", "7",
        *cpu_args(output_dir, per_device_train_batch_size=per_device, **extra),
    ]


def _check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


@pytest.fixture(scope="module")
def single_process_run(tiny_model_dir, species_dataset, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("single")
    _check(run_probe(_args(tiny_model_dir, species_dataset, root / "out", GLOBAL_BATCH), root / "probe"))
    (record,) = probe_results(root / "probe")
    return {"record": record, "output": root / "out"}


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_on_two_cpu_processes(stage, tiny_model_dir, species_dataset, single_process_run, tmp_path):
    deepspeed = REPO / "training" / "deepspeed" / f"zero{stage}.json"
    args = _args(tiny_model_dir, species_dataset, tmp_path / "out", GLOBAL_BATCH // 2, deepspeed=deepspeed)
    _check(run_probe(args, tmp_path / "probe", launcher=ACCELERATE))
    records = probe_results(tmp_path / "probe")

    # Two real ranks, and the Trainer knows it (without the gloo set-up it believes it is alone).
    assert [r["rank"] for r in records] == [0, 1]
    assert all(r["world_size"] == 2 and r["trainer_world_size"] == 2 for r in records)
    assert all(r["distributed_type"].endswith("DEEPSPEED") for r in records)

    # Each step, the ranks trained on different rows, together the single-process run's batch.
    reference = single_process_run["record"]
    assert len(records[0]["batches"]) == len(records[1]["batches"]) == len(reference["batches"]) == STEPS
    for step, (first, second, whole) in enumerate(zip(records[0]["batches"], records[1]["batches"],
                                                      reference["batches"])):
        assert not set(first) & set(second), f"step {step}: both ranks saw {set(first) & set(second)}"
        assert sorted(first + second) == sorted(whole), step

    # ZeRO-3 partitions every parameter: each rank holds about half, and outside a forward nothing is gathered.
    zero3 = records[0]["zero3"]
    if stage == 3:
        assert zero3["num_partitioned"] == zero3["num_parameters"] > 0
        assert zero3["gathered_numel"] == 0
        for record in records:
            assert record["zero3"]["local_numel"] == pytest.approx(zero3["full_numel"] / 2, rel=0.01)
    else:
        assert zero3["num_partitioned"] == 0

    # The same global batch gives the same loss as one process, step after step.
    losses = loss_history(records[0]["log_history"])
    expected = loss_history(reference["log_history"])
    assert len(losses) == len(expected) == STEPS
    assert all(math.isfinite(loss) for loss in losses)
    assert losses == pytest.approx(expected, rel=1e-5)

    # The saved folder (ZeRO-3: gathered from both ranks) holds the trained weights of the single-process run.
    trained, reference_weights = saved_weights(tmp_path / "out"), saved_weights(single_process_run["output"])
    assert trained.keys() == reference_weights.keys()
    for key, value in reference_weights.items():
        assert torch.allclose(trained[key], value, atol=1e-4), key
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
