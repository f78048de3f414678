"""The CUDA check (under 8 minutes on one H100-class GPU): what this project could not run on its CPU-only machines.

1. parity: the tiny parity model in bf16 with SDPA on the GPU against the CPU fp32 reference, greedy ids of a few
   10-s windows (share of identical answers) and the teacher-forced logit error;
2. full size, bf16: the 8B-shaped model (random weights) on the GPU, its memory, batched throughput (s/window) and the
   audio-s/s of a long recording through the pipeline;
3. full size, nf4 and int8: the same saved weights read through `naturelm.loading.load(..., quantize=...)`, as a
   user gets them (quantized while the checkpoint is read): peak GPU memory of load + one batch, and s/window.

The full-size weights (random, bf16) are saved once to `bench_inference.FULL_DIR` (16 GB; env
NATURELM_BENCH_FULL_DIR) and every full-size step reads them from there.

Prints one JSON line per step and exits non-zero if a step fails or a bound is missed. Usage:

    ./run python bench/gpu_check.py [--steps parity bf16 nf4 int8] [--batch 8] [--long-seconds 600]
"""

import argparse
import gc
import json
import sys
import time

import torch
from bench_inference import FULL_DIR, build, long_recording

from pipeline_naturelm import DEFAULT_QUERY, TASK, NatureLMPipeline, build_prompt

NEW_TOKENS = 20
GB = 2**30


def _greedy(model, processor, clips) -> torch.Tensor:
    prompt = build_prompt(processor, DEFAULT_QUERY)
    inputs = processor(text=[prompt] * len(clips), audio=clips, sampling_rate=16000, return_tensors="pt",
                       padding=True).to(model.device)
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, num_beams=1,
                             do_sample=False)
    return ids[:, inputs["input_ids"].shape[1]:].cpu()


def parity(windows: int = 4) -> dict:
    audio = long_recording(10.0 * windows)
    clips = [audio[i * 160000:(i + 1) * 160000] for i in range(windows)]
    reference, processor, _ = build("tiny", torch.float32, "cpu")
    expected = _greedy(reference, processor, clips)
    model, _, _ = build("tiny", torch.bfloat16, "cuda")
    answers = _greedy(model, processor, clips)
    prompt = build_prompt(processor, DEFAULT_QUERY)
    inputs = processor(text=[prompt], audio=clips[:1], sampling_rate=16000, return_tensors="pt")
    with torch.inference_mode():
        exact = reference(**inputs).logits[0, -1]
        approx = model(**inputs.to("cuda")).logits[0, -1].float().cpu()
    error = float((approx - exact).norm() / exact.norm())
    return {"step": "parity", "attn_implementation": model.config._attn_implementation,
            "same_answer": float((answers == expected).all(-1).float().mean()), "logit_error": error,
            "ok": error < 0.05}


def _throughput(model, processor, batch: int, seconds: float) -> dict:
    pipe = NatureLMPipeline(model=model, processor=processor, task=TASK, device=model.device)
    kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, num_beams=1, do_sample=False)
    audio = long_recording(seconds)
    pipe(audio[:160000 * batch], sampling_rate=16000, batch_size=batch, **kwargs)  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    result = pipe(audio, sampling_rate=16000, batch_size=batch, **kwargs)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    return {"windows": len(result["windows"]), "seconds_per_window": elapsed / len(result["windows"]),
            "audio_s_per_s": len(audio) / 16000 / elapsed}


def full_bf16(batch: int, long_seconds: float) -> dict:
    torch.cuda.reset_peak_memory_stats()
    model, processor, info = build("full", torch.bfloat16, "cuda")
    loaded_gb = torch.cuda.max_memory_allocated() / GB
    row = {"step": "bf16", "build_seconds": info["build_seconds"], "load_peak_gb": loaded_gb,
           "batched": _throughput(model, processor, batch, 10.0 * batch),
           "long_recording": _throughput(model, processor, batch, long_seconds)}
    row["peak_gb"] = torch.cuda.max_memory_allocated() / GB
    row["ok"] = True
    return row


def full_quantized(method: str, batch: int) -> dict:
    torch.cuda.reset_peak_memory_stats()
    model, processor, info = build("full", torch.bfloat16, "cuda", quantize=method)
    row = {"step": method, "load_seconds": info["build_seconds"], "load_peak_gb": torch.cuda.max_memory_allocated() / GB,
           "batched": _throughput(model, processor, batch, 10.0 * batch)}
    row["peak_gb"] = torch.cuda.max_memory_allocated() / GB
    row["ok"] = row["peak_gb"] <= {"nf4": 7.0, "int8": 11.0}[method]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", nargs="+", default=["parity", "bf16", "nf4", "int8"],
                        choices=["parity", "bf16", "nf4", "int8"])
    parser.add_argument("--batch", type=int, default=8, help="windows per batch at full size")
    parser.add_argument("--long-seconds", type=float, default=600.0, help="the long recording's length")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); run it on a GPU machine.",
              file=sys.stderr)
        return 2
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    failed = False
    print(json.dumps({"full_size_weights": str(FULL_DIR)}), flush=True)
    for step in args.steps:
        try:
            if step == "parity":
                row = parity()
            elif step == "bf16":
                row = full_bf16(args.batch, args.long_seconds)
            else:
                row = full_quantized(step, args.batch)
        except Exception as error:  # noqa: BLE001 - one failed step must not hide the others
            row = {"step": step, "ok": False, "error": f"{type(error).__name__}: {error}"}
        failed |= not row["ok"]
        print(json.dumps(row), flush=True)
        gc.collect()
        torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
