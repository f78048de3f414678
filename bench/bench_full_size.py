"""Full size (Llama-3.1-8B shaped, random weights) on this machine, one quantization after another: peak memory of
load + one batch of windows, load time and s/window (a benchmark, not a test; issue 21's table).

Each row is `bench_inference.py --one full,BATCH,1 --quantize METHOD --repeats 1` in its own process, reading the same
saved bf16 folder (made once, 16 GB: `bench_inference.FULL_DIR`) through `naturelm.loading.load`, as `naturelm infer
--model FOLDER --quantize METHOD` reads it. Memory is reported twice: peak RSS (`ru_maxrss`, which counts the mapped
pages of the safetensors files) and peak anonymous memory (what the process allocated: a model read tensor by tensor
stays far below one held whole). Usage:

    ./run python bench/bench_full_size.py [--methods bf16 fbgemm-int8 nf4 int8] [--batch 4] [--new-tokens 5]
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["bf16", "fbgemm-int8", "nf4", "int8"],
                        choices=["bf16", "fbgemm-int8", "nf4", "int8"])
    parser.add_argument("--batch", type=int, default=4, help="windows in the one timed batch")
    parser.add_argument("--new-tokens", type=int, default=5, help="tokens decoded per window (always this many)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    bench = Path(__file__).with_name("bench_inference.py")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, batch {args.batch}, "
          f"{args.new_tokens} new tokens per window\n")
    print("| weights | load (s) | peak anonymous memory, load (GB) | peak anonymous memory, load + batch (GB) | "
          "peak RSS (GB) | s/window |")
    print("| --- | --- | --- | --- | --- | --- |")
    for method in args.methods:
        command = [sys.executable, str(bench), "--one", f"full,{args.batch},1", "--repeats", "1", "--device",
                   args.device, "--new-tokens", str(args.new_tokens)]
        if method != "bf16":
            command += ["--quantize", method]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(f"| {method} | failed: {done.stderr.strip().splitlines()[-1][:200]} | | | | |", flush=True)
            continue
        row = json.loads(done.stdout.splitlines()[-1])
        print(f"| {method} | {row['build_seconds']:.0f} | {row['load_peak_anon_gb']:.2f} | {row['peak_anon_gb']:.2f} | "
              f"{row['peak_rss_gb']:.2f} | {row['seconds_per_window']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
