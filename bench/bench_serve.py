"""`naturelm serve` under 16 concurrent clients against the offline engine on the same clips, at mid size (a benchmark,
not a test).

The mid model of `bench_inference.py` (full BEATs and Q-Former, a Llama of hidden 512 x 4 layers; random weights) is
saved as a converted folder (`bench_inference.save_small`), which both sides load with `naturelm.loading.load` (fp32).
The clips are `--clients` 10-s windows (every 2.5 s) of the shared recordings (`../shared/audio`, env
NATURELM_AUDIO_DIR), sent as WAV. Both sides decode greedily with at most 20 new tokens, the default query,
`--batch-size` clips per model call:

- offline: the engine (`run_recordings` over the clips as arrays), the model already loaded;
- served: `naturelm serve --model mid --dtype fp32` in its own process; each of `--clients` threads sends one clip in
  one `POST /predict` at the same moment. Throughput: clips / wall time from the first send to the last answer.

Latency: one request at a time on the idle server (`--idle` requests) and the per-request times of the concurrent
round (median and 95th percentile). Also checked: every request answered once, with the offline engine's answer.
Usage:

    ./run python bench/bench_serve.py [--clients 16] [--batch-size 8] [--idle 5]
"""

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile

from bench_inference import save_small

SHARED = Path(__file__).resolve().parents[2] / "shared"
MAX_NEW_TOKENS = 20


def clips(count: int, seconds: float = 10.0, hop: float = 2.5) -> list[np.ndarray]:
    """`count` whole `seconds` windows of the shared recordings, every `hop` s (16 kHz mono, the one audio reader);
    repeated from the first if the recordings hold fewer."""
    from audio_naturelm import SAMPLING_RATE, read_audio

    audio_dir = Path(os.environ.get("NATURELM_AUDIO_DIR", SHARED / "audio"))
    size, step, found = int(seconds * SAMPLING_RATE), int(hop * SAMPLING_RATE), []
    for path in sorted(audio_dir.iterdir()):
        samples = read_audio(path)
        found += [samples[start: start + size] for start in range(0, len(samples) - size + 1, step)]
    if not found:
        raise SystemExit(f"no whole {seconds:g}-s window in {audio_dir}")
    return [found[i % len(found)] for i in range(count)]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def offline(model_dir: Path, samples: list[np.ndarray], batch_size: int) -> tuple[list[str], float]:
    import torch

    from naturelm.loading import load
    from pipeline_naturelm import DEFAULT_QUERY, Recording, build_prompt, generation_task, run_recordings

    model, processor = load(str(model_dir), dtype=torch.float32)
    prompt = build_prompt(processor, DEFAULT_QUERY)
    recordings = [Recording.from_array(str(i), s, prompt=prompt) for i, s in enumerate(samples)]
    task = generation_task(num_beams=1, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    started = time.perf_counter()
    answers = [r.rows[0]["text"] for r in run_recordings(model, processor, recordings, task, batch_size)]
    return answers, time.perf_counter() - started


def request(sample_id: str, wav: str) -> dict:
    from pipeline_naturelm import DEFAULT_QUERY

    return {"schema_version": "predictions_v1", "requests": [{
        "sample_id": sample_id, "messages": [{"role": "user", "content": DEFAULT_QUERY}],
        "audio_inputs": [{"payload_type": "base64_wav", "data": wav, "sample_rate": 16000}],
        "generation_config": {"max_tokens": MAX_NEW_TOKENS, "temperature": 0.0, "num_beams": 1}}]}


def ask(url: str, body: dict) -> tuple[str, float]:
    started = time.perf_counter()
    reply = httpx.post(url + "/predict", json=body, timeout=600)
    reply.raise_for_status()
    (item,) = reply.json()["responses"]
    if item["error"]:
        raise RuntimeError(item["error"])
    return item["predictions"][0], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--idle", type=int, default=5, help="sequential requests on the idle server")
    args = parser.parse_args()

    samples = clips(args.clients)
    wavs = []
    for s in samples:
        buffer = io.BytesIO()
        soundfile.write(buffer, s, 16000, format="WAV", subtype="FLOAT")
        wavs.append(base64.b64encode(buffer.getvalue()).decode())

    with tempfile.TemporaryDirectory() as root:
        model_dir = Path(root) / "mid"
        save_small("mid", model_dir)
        expected, offline_seconds = offline(model_dir, samples, args.batch_size)

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "naturelm.cli", "serve", "--model", str(model_dir), "--dtype", "fp32",
             "--port", str(port), "--batch-size", str(args.batch_size), "--max-batch-size", str(args.clients)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            while True:
                try:
                    if httpx.get(url + "/health", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    if server.poll() is not None:
                        raise SystemExit(f"naturelm serve exited with {server.returncode}")
                    time.sleep(0.5)
            ask(url, request("warm-up", wavs[0]))
            idle = [ask(url, request(f"idle{i}", wavs[i % len(wavs)]))[1] for i in range(args.idle)]

            results: dict[int, tuple[str, float]] = {}
            barrier = threading.Barrier(args.clients + 1)

            def client(index: int) -> None:
                barrier.wait()
                results[index] = ask(url, request(f"c{index}", wavs[index]))

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            for thread in threads:
                thread.start()
            barrier.wait()
            started = time.perf_counter()
            for thread in threads:
                thread.join()
            served_seconds = time.perf_counter() - started
            health = httpx.get(url + "/health").json()
        finally:
            server.terminate()
            server.wait(timeout=60)

    busy = [results[i][1] for i in sorted(results)]
    result = {
        "clients": args.clients, "batch_size": args.batch_size, "max_new_tokens": MAX_NEW_TOKENS,
        "offline_s": round(offline_seconds, 2), "served_s": round(served_seconds, 2),
        "offline_clips_per_s": round(args.clients / offline_seconds, 3),
        "served_clips_per_s": round(args.clients / served_seconds, 3),
        "throughput_ratio": round(offline_seconds / served_seconds, 2),
        "idle_latency_median_s": round(statistics.median(idle), 2),
        "idle_latency_p95_s": round(percentile(idle, 95), 2),
        "busy_latency_median_s": round(statistics.median(busy), 2),
        "busy_latency_p95_s": round(percentile(busy, 95), 2),
        "answered": len(results), "answered_by_server": health["answered"],
        "same_answers_as_offline": [results[i][0] for i in range(args.clients)] == expected,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
