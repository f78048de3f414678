"""Inference throughput and memory of the NatureLM pipeline (a benchmark, not a test).

Builds a long 16 kHz recording from `../shared/audio` (env NATURELM_AUDIO_DIR) and runs it, already in memory as the
original was measured, through the pipeline in 10-s windows with exactly 20 new tokens per window (the minimum is
forced so random weights cannot stop early), greedy and with 2 beams, batched and one window at a time:

- `tiny`: the parity model converted from `../shared/parity` (env NATURELM_PARITY_DIR), 5 minutes of audio;
- `mid`: random weights, full BEATs (12 x 768) and Q-Former (768), a Llama of hidden 512 x 4 layers, 2 minutes;
- `full`: one 10-s window through the full-size architecture (Llama-3.1-8B shaped, random bf16 weights; `--dtype`
  does not apply).

Each configuration runs in its own process so that its peak RSS is its own, set up as `naturelm infer` sets itself up
on CPU (freed memory kept mapped, LoRA merged into the weights). After one warm-up batch, the recording is run
`--repeats` times and the median is reported. Usage:

    ./run python bench/bench_inference.py [tiny mid full] [--batch-size 32] [--dtype fp32|bf16] [--repeats 3]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def long_recording(seconds: float) -> np.ndarray:
    """The shared recordings, mono 16 kHz, concatenated and repeated to `seconds`."""
    audio_dir = Path(os.environ.get("NATURELM_AUDIO_DIR", SHARED / "audio"))
    pieces = []
    for path in sorted(audio_dir.iterdir()):
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        pieces.append(soxr.resample(audio.mean(1), rate, 16000) if rate != 16000 else audio.mean(1))
    audio = np.concatenate(pieces)
    return np.tile(audio, int(np.ceil(seconds * 16000 / len(audio))))[: int(seconds * 16000)]


def build(size: str, dtype: torch.dtype):
    from naturelm.convert import from_original
    from naturelm.testing_utils import tiny_model_and_processor

    if size == "tiny":
        parity = Path(os.environ.get("NATURELM_PARITY_DIR", SHARED / "parity"))
        return from_original(parity / "original_checkpoint_full", parity / "base_llama",
                             parity / "qformer_config.json", dtype=dtype)
    if size == "mid":
        model, processor = tiny_model_and_processor(
            audio_config={}, qformer_config={},
            text_config=dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                             num_key_value_heads=4),
        )
        return model.to(dtype), processor
    raise ValueError(size)


def run_config(size: str, batch_size: int, num_beams: int, dtype: str, repeats: int) -> dict:
    from naturelm.loading import keep_freed_memory_mapped
    from pipeline_naturelm import TASK, NatureLMPipeline

    keep_freed_memory_mapped()
    torch.manual_seed(0)
    model, processor = build(size, DTYPES[dtype])
    model.merge_adapter_into_weights()
    pipe = NatureLMPipeline(model=model.eval(), processor=processor, task=TASK, device=model.device)
    audio = long_recording({"tiny": 300.0, "mid": 120.0}[size])
    kwargs = dict(max_new_tokens=20, min_new_tokens=20, num_beams=num_beams, do_sample=False)
    with torch.inference_mode():
        pipe(audio[: 16000 * 10 * batch_size], sampling_rate=16000, batch_size=batch_size, **kwargs)  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            result = pipe(audio, sampling_rate=16000, batch_size=batch_size, **kwargs)
            times.append(time.perf_counter() - started)
    seconds = float(np.median(times))
    return {
        "size": size, "batch_size": batch_size, "num_beams": num_beams, "dtype": dtype,
        "audio_seconds": len(audio) / 16000, "seconds": seconds, "audio_s_per_s": len(audio) / 16000 / seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "texts": [w["text"] for w in result["windows"]],
    }


def run_full() -> dict:
    """One 10-s window through the full-size architecture in bf16, built on the meta device (never fp32), placed as
    `naturelm infer` places it (audio encoder in fp32 on a CPU without native bf16)."""
    from naturelm import NatureLMConfig, NatureLMForConditionalGeneration
    from feature_extraction_naturelm import NatureLMFeatureExtractor
    from naturelm.loading import audio_encoder_to_fp32_without_native_bf16, keep_freed_memory_mapped
    from pipeline_naturelm import TASK, NatureLMPipeline
    from processing_naturelm import NatureLMProcessor
    from naturelm.testing_utils import llama3_tokenizer

    keep_freed_memory_mapped()
    started = time.perf_counter()
    with torch.device("meta"):
        model = NatureLMForConditionalGeneration(NatureLMConfig())
    model = model.to(torch.bfloat16).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():  # cheap random weights, filled in place
            param.uniform_(-0.02, 0.02, generator=generator)
        for module in model.modules():  # non-persistent buffers (rotary frequencies) are rebuilt
            if hasattr(module, "rope_init_fn"):
                inv_freq, module.attention_scaling = module.rope_init_fn(module.config, "cpu")
                module.inv_freq = inv_freq
                module.original_inv_freq = inv_freq
    fp32_encoder = audio_encoder_to_fp32_without_native_bf16(model)
    build_seconds = time.perf_counter() - started
    processor = NatureLMProcessor(NatureLMFeatureExtractor(), llama3_tokenizer())
    pipe = NatureLMPipeline(model=model.eval(), processor=processor, task=TASK, device=torch.device("cpu"))
    audio = long_recording(10.0)
    started = time.perf_counter()
    with torch.inference_mode():
        pipe(audio, sampling_rate=16000, batch_size=1, max_new_tokens=20, min_new_tokens=20, do_sample=False)
    return {"size": "full", "fp32_audio_encoder": fp32_encoder, "build_seconds": build_seconds,
            "seconds_per_window": time.perf_counter() - started,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", default=["tiny", "mid", "full"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median reported)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args()
    if args.one:
        size, batch, beams = args.one.split(",")
        result = run_full() if size == "full" else run_config(size, int(batch), int(beams), args.dtype, args.repeats)
        print(json.dumps(result))
        return

    def one(size: str, batch: int, beams: int) -> dict:
        output = subprocess.run([sys.executable, __file__, "--one", f"{size},{batch},{beams}", "--dtype", args.dtype,
                                 "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
        return json.loads(output.stdout.strip().splitlines()[-1])

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dtype {args.dtype}")
    for size in args.sizes:
        if size == "full":
            r = one("full", 1, 1)
            print(f"full   1 window, bf16 LLM, {'fp32' if r['fp32_audio_encoder'] else 'bf16'} audio encoder: "
                  f"{r['seconds_per_window']:.1f} s/window, peak RSS {r['peak_rss_gb']:.1f} GB "
                  f"(built in {r['build_seconds']:.1f} s)")
            continue
        for beams in (1, 2):
            batched, single = one(size, args.batch_size, beams), one(size, 1, beams)
            same = batched["texts"] == single["texts"]
            print(f"{size:5s} beams={beams} batch={args.batch_size:3d}: {batched['audio_s_per_s']:7.1f} audio-s/s, "
                  f"peak {batched['peak_rss_gb']:.2f} GB | batch=1: {single['audio_s_per_s']:7.1f} audio-s/s, "
                  f"peak {single['peak_rss_gb']:.2f} GB | ratio {batched['audio_s_per_s'] / single['audio_s_per_s']:.1f}x"
                  f" | batched == unbatched: {same}")


if __name__ == "__main__":
    main()
