"""`naturelm infer --ray` against the local engine on the same files, at mid size (a benchmark, not a test).

The mid model of `bench_inference.py` (full BEATs and Q-Former, a Llama of hidden 512 x 4 layers; random weights) is
saved as a converted folder, which both sides load with `naturelm.loading.load` (fp32, as `naturelm infer
--dtype fp32`). The files are the shared recordings (`../shared/audio`, env NATURELM_AUDIO_DIR) copied `--copies`
times. Both sides decode greedily with exactly 20 new tokens per window, `--batch-size` windows per batch:

- local: `naturelm.infer.run` (the engine, `run_recordings`) with the model already loaded;
- Ray: `naturelm.ray_infer.run_ray` on a local Ray with one CPU actor of 2 CPUs (torch then runs 2 threads, as the
  local run does), which runs its files through the same engine, reading thread included.

Reported: audio-s/s of each side with start-up (local: model load + run; Ray: `ray.init` + actor start and model load
+ run) and without it (from the first answered batch to the end, over the audio answered after it), the ratios, and
whether the rows are equal. Usage:

    ./run python bench/bench_ray.py [--copies 3] [--batch-size 8]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_inference import save_small

SHARED = Path(__file__).resolve().parents[2] / "shared"
DECODING = dict(num_beams=1, max_new_tokens=20, min_new_tokens=20, do_sample=False)


class Clock:
    """Wall time of the first answered batch and of the last, and the audio answered after the first."""

    def __init__(self) -> None:
        self.first = self.last = None
        self.after_first = 0.0

    def answered(self, seconds: float) -> None:
        if not seconds:  # only bad files' rows
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        else:
            self.after_first += seconds
        self.last = now

    def rate(self) -> float:
        return self.after_first / (self.last - self.first)


def timed_run(run, clock: Clock):
    """Runs `run()` with the progress tracker feeding `clock` (both sides report answered audio through it)."""
    from naturelm import infer

    original = infer.RunProgress.answered

    def answered(self, seconds: float) -> None:
        clock.answered(seconds)
        original(self, seconds)

    infer.RunProgress.answered = answered
    try:
        return run()
    finally:
        infer.RunProgress.answered = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=3, help="copies of the shared recordings to run")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import torch

    from naturelm.infer import MemoryWriter, run
    from naturelm.loading import load
    from naturelm.ray_infer import RayResources, connect, run_ray
    from pipeline_naturelm import DEFAULT_QUERY

    audio_dir = Path(os.environ.get("NATURELM_AUDIO_DIR", SHARED / "audio"))
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        files = []
        for copy in range(args.copies):
            for path in sorted(audio_dir.iterdir()):
                files.append(root / f"{copy}_{path.name}")
                shutil.copy(path, files[-1])
        model_dir = root / "mid"
        save_small("mid", model_dir)
        load_kwargs = dict(model=str(model_dir), dtype=torch.float32, device="cpu")

        started = time.perf_counter()
        model, processor = load(**load_kwargs)
        load_seconds = time.perf_counter() - started
        local, local_clock = MemoryWriter(), Clock()
        summary = timed_run(lambda: run(model, processor, files, local, DEFAULT_QUERY, batch_size=args.batch_size,
                                        progress=False, **DECODING), local_clock)
        del model, processor

        started = time.perf_counter()
        connect(None, num_cpus=2)
        init_seconds = time.perf_counter() - started
        remote, ray_clock = MemoryWriter(), Clock()
        ray_summary = timed_run(lambda: run_ray(files, remote, load_kwargs, DEFAULT_QUERY, batch_size=args.batch_size,
                                                resources=RayResources(1, 2.0), progress=False, **DECODING),
                                ray_clock)
        ray_total = time.perf_counter() - started
        import ray

        ray.shutdown()

    audio = summary.audio_seconds
    result = {
        "files": summary.files, "windows": summary.windows, "audio_seconds": round(audio, 1),
        "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(),
        "local_load_s": round(load_seconds, 1), "local_run_s": round(summary.seconds, 1),
        "ray_init_s": round(init_seconds, 1), "ray_total_s": round(ray_total, 1),
        "local_audio_s_per_s": round(audio / (load_seconds + summary.seconds), 2),
        "ray_audio_s_per_s": round(audio / ray_total, 2),
        "local_steady_audio_s_per_s": round(local_clock.rate(), 2),
        "ray_steady_audio_s_per_s": round(ray_clock.rate(), 2),
        "same_rows": local.results == remote.results and ray_summary.windows == summary.windows,
    }
    result["ratio_with_startup"] = round(result["ray_audio_s_per_s"] / result["local_audio_s_per_s"], 2)
    result["ratio_without_startup"] = round(result["ray_steady_audio_s_per_s"] / result["local_steady_audio_s_per_s"],
                                            2)
    print(json.dumps(result), file=sys.stdout)


if __name__ == "__main__":
    main()
