"""Runs training/sft_naturelm.py (its parser, `build_trainer` and `train_and_save`) with probes for the tests.

Each rank writes `$NATURELM_PROBE_DIR/rank<k>.json`: the world size as torch.distributed and the Trainer see it, the
answers and tasks of the rows in every batch it trained on, the ZeRO-3 partitioning of its parameters, and the log
history.
With `NATURELM_PROBE_KILL_AFTER_SAVE=<step>`, the process SIGKILLs itself right after that step's checkpoint is
written, like a preempted job (no clean-up, no final save).
"""

import importlib.util
import json
import os
import signal
from pathlib import Path

import torch.distributed as dist
from transformers import TrainerCallback

from naturelm.training import setup_cpu_distributed

SCRIPT = Path(__file__).resolve().parents[2] / "training" / "sft_naturelm.py"
spec = importlib.util.spec_from_file_location("sft_naturelm", SCRIPT)
sft = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sft)


class Probe(TrainerCallback):
    def __init__(self, kill_after_save: int | None):
        self.kill_after_save = kill_after_save
        self.zero3 = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        partitioned = [p for p in model.parameters() if hasattr(p, "ds_numel")]
        self.zero3 = {
            "num_parameters": len(list(model.parameters())),
            "num_partitioned": len(partitioned),
            "full_numel": sum(p.ds_numel for p in partitioned),
            "local_numel": sum(p.ds_tensor.numel() for p in partitioned),
            "gathered_numel": sum(p.numel() for p in partitioned),
        }

    def on_save(self, args, state, control, **kwargs):
        if self.kill_after_save is not None and state.global_step == self.kill_after_save:
            os.kill(os.getpid(), signal.SIGKILL)


def run(argv: list[str] | None = None, kill_after_save: int | None = None) -> dict:
    """Trains like the script does and returns this rank's record."""
    parser = sft.make_parser()
    setup_cpu_distributed(parser, argv)
    naturelm_args, data_args, training_args, model_args = parser.parse_args_and_config(argv)
    trainer = sft.build_trainer(naturelm_args, data_args, training_args, model_args)

    batches, tasks, collate = [], [], trainer.data_collator

    def recording_collator(examples):
        batches.append([example["output"] for example in examples])
        tasks.append([example["task"] for example in examples])
        return collate(examples)

    trainer.data_collator = recording_collator
    probe = Probe(kill_after_save)
    trainer.add_callback(probe)
    rank = trainer.args.process_index
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    distributed_type = str(trainer.accelerator.distributed_type)
    sft.train_and_save(trainer, naturelm_args, training_args)
    return {
        "rank": rank,
        "world_size": world_size,
        "trainer_world_size": trainer.args.world_size,
        "distributed_type": distributed_type,
        "batches": batches,
        "tasks": tasks,
        "zero3": probe.zero3,
        "log_history": trainer.state.log_history,
    }


if __name__ == "__main__":
    kill = os.environ.get("NATURELM_PROBE_KILL_AFTER_SAVE")
    record = run(kill_after_save=int(kill) if kill else None)
    Path(os.environ["NATURELM_PROBE_DIR"], f"rank{record['rank']}.json").write_text(json.dumps(record))
