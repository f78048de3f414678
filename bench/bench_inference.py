"""Inference throughput and memory of the NatureLM engine (a benchmark, not a test).

Builds a long 16 kHz recording from `../shared/audio` (env NATURELM_AUDIO_DIR) and runs it, already in memory as the
original was measured, through the engine (`naturelm.engine.run_recordings`) in 10-s windows with exactly 20 new
tokens per window (the bench's own logits processor bans the end tokens, so random weights cannot stop early), greedy
and with 2 beams, batched and one window at a time:

- `tiny`: the parity model converted from `../shared/parity` (env NATURELM_PARITY_DIR), 5 minutes of audio;
- `mid`: random weights, full BEATs (12 x 768) and Q-Former (768), a Llama of hidden 512 x 4 layers, 2 minutes;
- `full`: the full-size architecture (Llama-3.1-8B shaped, random bf16 weights, saved once to
  env NATURELM_BENCH_FULL_DIR, default ~/.cache/naturelm-bench/full: 16 GB; `--dtype` does not apply), `--full-batch`
  windows batched and one window alone (no warm-up batch, one timed run: each window costs seconds);
- `e2e`: `naturelm infer`'s own loop (`naturelm.infer.run`) on a folder of the compressed (mp3) recordings at mid
  size, against the same audio decoded beforehand and run in memory: shows how far background decoding hides the
  decoder.

Each configuration runs in its own process so that its peak RSS (load included) is its own; the model is saved as a
folder and read back by `naturelm.loading.load`, as `naturelm infer --model FOLDER` reads it (LoRA merged, fp32 audio
encoder beside a bf16 LLM where the CPU has no native bf16, `--quantize` as given). After one warm-up batch, the
recording is run `--repeats` times and the median is reported. Usage:

    ./run python bench/bench_inference.py [tiny mid full e2e] [--batch-size 32] [--full-batch 4] [--dtype fp32|bf16]
        [--repeats 3] [--device cpu|cuda] [--quantize nf4|int8|fbgemm-int8] [--new-tokens 20]
    ./run python bench/bench_inference.py --one SIZE,BATCH,BEAMS   # one configuration, one JSON line: size,
        # batch_size, num_beams, audio_s_per_s, peak_rss_gb (+ seconds_per_window, texts, ...); other tools read it
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from naturelm.options import QUANTIZATIONS

SHARED = Path(__file__).resolve().parents[2] / "shared"
FULL_DIR = Path(os.environ.get("NATURELM_BENCH_FULL_DIR", Path.home() / ".cache" / "naturelm-bench" / "full"))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def long_recording(seconds: float) -> np.ndarray:
    """The shared recordings, mono 16 kHz (read by the package's audio path), concatenated and repeated to
    `seconds`."""
    from audio_naturelm import read_audio

    audio_dir = Path(os.environ.get("NATURELM_AUDIO_DIR", SHARED / "audio"))
    audio = np.concatenate([read_audio(path) for path in sorted(audio_dir.iterdir())])
    return np.tile(audio, int(np.ceil(seconds * 16000 / len(audio))))[: int(seconds * 16000)]


def build(size: str, dtype: torch.dtype, device: str, quantize: str | None = None, full_dir: Path | None = None):
    """The model of a size and its processor, loaded from a saved folder by the one loader (`naturelm.loading.load`),
    exactly as `naturelm infer --model FOLDER --quantize ...` loads it (placement and quantization included); plus
    how it was built. tiny and mid are saved to a temporary folder first (seconds); the full size is saved once to
    `full_dir` and reused."""
    from naturelm.loading import load

    started = time.perf_counter()
    if size == "full":
        folder = full_dir or FULL_DIR
        if not (folder / "config.json").is_file():
            save_full_size(folder)
        model, processor = load(str(folder), dtype=torch.bfloat16, device=device, quantize=quantize)
    else:
        with tempfile.TemporaryDirectory() as folder:
            save_small(size, Path(folder))
            model, processor = load(folder, dtype=dtype, device=device, quantize=quantize)
    info = {"fp32_audio_encoder": model.model.audio_tower.dtype == torch.float32 != model.model.language_model.dtype,
            "quantize": quantize, "build_seconds": time.perf_counter() - started}
    return model, processor, info


def save_small(size: str, folder: Path) -> None:
    """tiny: the parity model converted from the original layout (`naturelm convert`); mid: random weights (seed 0),
    full BEATs and Q-Former, a Llama of hidden 512 x 4 layers; both in fp32."""
    from naturelm.convert import convert
    from naturelm.testing_utils import tiny_model_and_processor

    if size == "tiny":
        parity = Path(os.environ.get("NATURELM_PARITY_DIR", SHARED / "parity"))
        convert(parity / "original_checkpoint_full", folder, parity / "base_llama", parity / "qformer_config.json",
                dtype="fp32")
        return
    if size != "mid":
        raise ValueError(size)
    torch.manual_seed(0)
    model, processor = tiny_model_and_processor(
        audio_config={}, qformer_config={},
        text_config=dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=4),
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def save_full_size(folder: Path) -> None:
    """The full-size architecture (Llama-3.1-8B shaped) with random bf16 weights, built on the meta device (never
    fp32), filled in place and saved as a converted folder (16 GB of safetensors shards)."""
    from configuration_naturelm import NatureLMConfig
    from feature_extraction_naturelm import NatureLMFeatureExtractor
    from modeling_naturelm import NatureLMForConditionalGeneration
    from naturelm.testing_utils import llama3_tokenizer
    from processing_naturelm import NatureLMProcessor

    with torch.device("meta"):
        model = NatureLMForConditionalGeneration(NatureLMConfig())
    model = model.to(torch.bfloat16).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():  # cheap random weights, filled in place
            param.uniform_(-0.02, 0.02, generator=generator)
    # non-persistent buffers (rotary frequencies) are not saved: `from_pretrained` rebuilds them
    model.save_pretrained(folder)
    NatureLMProcessor(NatureLMFeatureExtractor(), llama3_tokenizer()).save_pretrained(folder)


class BanEndTokens(LogitsProcessor):
    """Every window decodes exactly `max_new_tokens`: the end tokens' scores are set to -inf in place, a few element
    writes per step (transformers' `min_new_tokens` rebuilds a mask over the 128k vocabulary at every step, which
    costs a third of a small model's decoding time on CPU and would be measured as the engine's)."""

    def __init__(self, eos_token_id: int | list[int]):
        self.eos_token_id = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.eos_token_id] = -float("inf")
        return scores


def decoding(model, num_beams: int, new_tokens: int = 20) -> dict:
    """The bench's `generate` arguments: `new_tokens` new tokens (20 by default), always."""
    return dict(max_new_tokens=new_tokens, num_beams=num_beams, do_sample=False,
                logits_processor=LogitsProcessorList([BanEndTokens(model.generation_config.eos_token_id)]))


def run_arrays(model, processor, arrays: list[np.ndarray], batch_size: int, **generate_kwargs) -> list[list[dict]]:
    """16 kHz recordings already in memory through the engine, in 10-s windows: each recording's rows."""
    from naturelm.engine import DEFAULT_QUERY, Recording, build_prompt, generation_task, run_recordings

    prompt = build_prompt(processor, DEFAULT_QUERY)
    recordings = [Recording.from_array(f"input {i}", a, prompt=prompt) for i, a in enumerate(arrays)]
    results = run_recordings(model, processor, recordings, generation_task(**generate_kwargs), batch_size)
    return [result.rows for result in results]


class AnonymousMemoryPeak:
    """The peak of this process's anonymous resident memory (`RssAnon`: what it allocated, without the pages of
    files it maps, which the kernel can drop), sampled every 10 ms in a thread. `ru_maxrss` counts mapped pages of
    the safetensors files too, so it cannot tell a model read tensor by tensor from one held whole."""

    def __init__(self) -> None:
        import threading

        self.peak_kb = 0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            time.sleep(0.01)

    @property
    def gb(self) -> float:
        return self.peak_kb / 2**20


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return float(np.median(times)), result


def run_config(size: str, batch_size: int, num_beams: int, dtype: str, repeats: int, device: str,
               quantize: str | None = None, new_tokens: int = 20) -> dict:
    anonymous = AnonymousMemoryPeak() if sys.platform.startswith("linux") else None
    model, processor, info = build(size, DTYPES[dtype], device, quantize)
    info["load_peak_anon_gb"] = anonymous.gb if anonymous else None
    audio = long_recording({"tiny": 300.0, "mid": 120.0, "full": 10.0 * batch_size}[size])
    kwargs = decoding(model, num_beams, new_tokens)
    if size == "full":
        repeats = 1  # seconds per window: no warm-up batch, one timed run
    else:
        run_arrays(model, processor, [audio[: 16000 * 10 * batch_size]], batch_size, **kwargs)  # warm-up
    seconds, result = _timed(lambda: run_arrays(model, processor, [audio], batch_size, **kwargs)[0], repeats)
    windows = len(result)
    return {
        "size": size, "batch_size": batch_size, "num_beams": num_beams, "dtype": "bf16" if size == "full" else dtype,
        "device": device, "audio_seconds": len(audio) / 16000, "seconds": seconds,
        "audio_s_per_s": len(audio) / 16000 / seconds, "seconds_per_window": seconds / windows,
        "peak_rss_gb": _peak_rss_gb(), "peak_anon_gb": anonymous.gb if anonymous else None, "new_tokens": new_tokens,
        **info, "texts": [w["text"] for w in result],
    }


def run_end_to_end(batch_size: int, num_beams: int, dtype: str, repeats: int, device: str) -> dict:
    """`naturelm.infer.run` on a folder of the shared mp3 recordings at mid size, against the engine on the same
    recordings decoded beforehand (the same windows, batches and texts)."""
    import tempfile

    from audio_naturelm import read_audio
    from naturelm.engine import DEFAULT_QUERY
    from naturelm.infer import MemoryWriter, run

    model, processor, info = build("mid", DTYPES[dtype], device)
    audio_dir = Path(os.environ.get("NATURELM_AUDIO_DIR", SHARED / "audio"))
    files = sorted(audio_dir.glob("*.mp3"))
    kwargs = decoding(model, num_beams)
    with tempfile.TemporaryDirectory() as folder:
        local = [Path(folder) / f.name for f in files]
        for source, target in zip(files, local):
            target.write_bytes(source.read_bytes())

        def from_files():
            writer = MemoryWriter()
            run(model, processor, local, writer, DEFAULT_QUERY, batch_size=batch_size, progress=False, **kwargs)
            return writer

        from_files()  # warm-up
        file_seconds, writer = _timed(from_files, repeats)
    arrays = [read_audio(f) for f in files]
    memory_seconds, outputs = _timed(lambda: run_arrays(model, processor, arrays, batch_size, **kwargs), repeats)
    audio_seconds = sum(len(a) for a in arrays) / 16000
    same = [writer.results[str(f)][0] for f in local] == outputs
    return {
        "size": "e2e", "model": "mid", "batch_size": batch_size, "num_beams": num_beams, "dtype": dtype,
        "device": device, "files": len(files), "audio_seconds": audio_seconds,
        "audio_s_per_s": audio_seconds / file_seconds, "in_memory_audio_s_per_s": audio_seconds / memory_seconds,
        "ratio": memory_seconds / file_seconds, "same_rows": same, "peak_rss_gb": _peak_rss_gb(), **info,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", default=["tiny", "mid", "full", "e2e"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--full-batch", type=int, default=4, help="windows per batch at full size")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median reported)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, help="the language model quantized (`naturelm infer --quantize`)")
    parser.add_argument("--new-tokens", type=int, default=20, help="tokens decoded per window (always this many)")
    parser.add_argument("--one", help="run one configuration SIZE,BATCH,BEAMS and print it as one JSON line")
    args = parser.parse_args()
    if args.one:
        size, batch, beams = args.one.split(",")
        if size == "e2e":
            result = run_end_to_end(int(batch), int(beams), args.dtype, args.repeats, args.device)
        else:
            result = run_config(size, int(batch), int(beams), args.dtype, args.repeats, args.device, args.quantize,
                                args.new_tokens)
        print(json.dumps(result))
        return

    def one(size: str, batch: int, beams: int) -> dict:
        command = [sys.executable, __file__, "--one", f"{size},{batch},{beams}", "--dtype", args.dtype,
                   "--repeats", str(args.repeats), "--device", args.device, "--new-tokens", str(args.new_tokens)] + (
                       ["--quantize", args.quantize] if args.quantize else [])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:  # show why the configuration failed, not only that it did
            sys.exit(f"{' '.join(command[1:])} failed:\n{done.stderr[-4000:]}")
        return json.loads(done.stdout.splitlines()[-1])

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dtype {args.dtype}, device {args.device}, "
          f"quantize {args.quantize}")
    for size in args.sizes:
        if size == "e2e":
            for beams in (1, 2):
                r = one("e2e", args.batch_size, beams)
                print(f"e2e (mid, {r['files']} mp3 files) beams={beams}: {r['audio_s_per_s']:.1f} audio-s/s from "
                      f"files, {r['in_memory_audio_s_per_s']:.1f} in memory ({r['ratio']:.2f}x) | same rows: "
                      f"{r['same_rows']}")
            continue
        batch = args.full_batch if size == "full" else args.batch_size
        for beams in (1, 2):
            batched, single = one(size, batch, beams), one(size, 1, beams)
            same = batched["texts"] == single["texts"][: len(batched["texts"])] if size == "full" else \
                batched["texts"] == single["texts"]
            print(f"{size:5s} beams={beams} batch={batch:3d}: {batched['audio_s_per_s']:7.2f} audio-s/s "
                  f"({batched['seconds_per_window']:.2f} s/window), peak {batched['peak_rss_gb']:.2f} GB | batch=1: "
                  f"{single['audio_s_per_s']:7.2f} audio-s/s ({single['seconds_per_window']:.2f} s/window), peak "
                  f"{single['peak_rss_gb']:.2f} GB | ratio {batched['audio_s_per_s'] / single['audio_s_per_s']:.1f}x"
                  f" | batched == unbatched: {same}")


if __name__ == "__main__":
    main()
