"""Multi-process training on machines without CUDA (CI, CPU clusters).

Launched with `accelerate launch` or `torchrun` on CPUs, neither accelerate nor the Trainer picks a process-group
backend: DeepSpeed then sees several processes while the Trainer believes there is one (wrong batch arithmetic, every
rank acting as rank 0, unsplit data). Creating the process group with gloo *before* the training arguments are
built, and telling the arguments to reuse it (`accelerator_config.use_configured_state`), fixes both DeepSpeed ZeRO
and plain DDP. On GPUs nothing here runs.
"""

import os
import sys
from pathlib import Path

import torch
import yaml
from accelerate import PartialState


def _wants_deepspeed(argv: list[str]) -> bool:
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":  # an accelerate DeepSpeed config
        return True
    if any(arg == "--deepspeed" or arg.startswith("--deepspeed=") for arg in argv):
        return True
    if "--config" in argv:
        config = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text()) or {}
        return bool(config.get("deepspeed"))
    return False


def setup_cpu_distributed(parser, argv: list[str] | None = None) -> bool:
    """
    Call before `parser.parse_args_and_config()`. On a multi-process launch (`WORLD_SIZE` > 1) without CUDA, creates
    the gloo process group (DeepSpeed's when the run uses DeepSpeed) and makes `use_configured_state` the parser's
    default `accelerator_config`. Returns whether it did.
    """
    argv = sys.argv[1:] if argv is None else argv
    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    deepspeed = _wants_deepspeed(argv)
    if deepspeed:
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    PartialState(backend="gloo", cpu=not deepspeed)
    parser.set_defaults_with_config(accelerator_config={"use_configured_state": True})
    return True


__all__ = ["setup_cpu_distributed"]
