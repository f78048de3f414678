"""How far each `--quantize` and bf16 move the outputs from fp32, and their seconds per window (a measurement, not a
test).

For the `tiny` parity model and the random `mid` model of `bench_inference.py`, 10-s windows of the shared recordings
go through the placements of the same weights: fp32 (the reference), bf16 (`naturelm infer`'s default), and each
`--quantize` (bitsandbytes nf4 / int8 quantized while a saved folder is read, fbgemm-int8 converted after a bf16 load;
as a user gets them). Reported against fp32:

- `logit_error`: ||logits - fp32 logits|| / ||fp32 logits||, teacher-forced on fp32's own 20-token greedy answer;
- `top1_agreement`: share of those forced positions whose argmax equals fp32's;
- `same_answer`: share of windows whose free-running 20-token greedy answer equals fp32's, token for token;
- `seconds_per_window`: the batched greedy run's wall time per window, all rows in one process (one sitting);
- `batch_independent` (quantized rows): share of windows answered the same at batch 1 and in a batch of all windows (the
  int8 kernel scales activations per call, so a window's neighbours can move it).

Random weights give near-flat next-token distributions, where a tiny error flips the argmax: the agreement figures
are a pessimistic floor, not the released model's. Usage:

    ./run python bench/bench_quantization.py [tiny mid] [--windows 8]
"""

import argparse
import json
import time

import torch
from bench_inference import build, long_recording

from naturelm.quantization import QUANTIZATIONS

from pipeline_naturelm import DEFAULT_QUERY, build_prompt

NEW_TOKENS = 20


def _answers(model, processor, clips, batch_size: int) -> torch.Tensor:
    prompt, answers = build_prompt(processor, DEFAULT_QUERY), []
    for first in range(0, len(clips), batch_size):
        batch = clips[first:first + batch_size]
        inputs = processor(text=[prompt] * len(batch), audio=batch, sampling_rate=16000, return_tensors="pt",
                           padding=True)
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, num_beams=1,
                                 do_sample=False)
        answers.append(ids[:, inputs["input_ids"].shape[1]:])
    return torch.cat(answers)


def _forced_logits(model, processor, clips, answers: torch.Tensor) -> torch.Tensor:
    """Logits of the answer positions with `answers` fed in (one clip at a time: no padding in the comparison)."""
    prompt, logits = build_prompt(processor, DEFAULT_QUERY), []
    for clip, answer in zip(clips, answers):
        inputs = processor(text=[prompt], audio=[clip], sampling_rate=16000, return_tensors="pt")
        ids = torch.cat([inputs["input_ids"], answer[None]], 1)
        with torch.inference_mode():
            out = model(**{**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)})
        logits.append(out.logits[0, -len(answer) - 1:-1].float())
    return torch.stack(logits)


def measure(size: str, windows: int) -> dict:
    audio = long_recording(10.0 * windows)
    clips = [audio[i * 160000:(i + 1) * 160000] for i in range(windows)]
    reference, processor, _ = build(size, torch.float32, "cpu")
    answers = _answers(reference, processor, clips, windows)
    exact = _forced_logits(reference, processor, clips, answers)
    del reference
    result = {"size": size, "windows": windows, "new_tokens": NEW_TOKENS}
    for name, quantize in (("bf16", None), *((method, method) for method in QUANTIZATIONS)):
        model, _, _ = build(size, torch.bfloat16, "cpu", quantize)
        logits = _forced_logits(model, processor, clips, answers)
        _answers(model, processor, clips[:1], 1)  # warm-up
        started = time.perf_counter()
        free = _answers(model, processor, clips, windows)
        seconds = time.perf_counter() - started
        row = {
            "logit_error": float((logits - exact).norm() / exact.norm()),
            "top1_agreement": float((logits.argmax(-1) == exact.argmax(-1)).float().mean()),
            "same_answer": float((free == answers).all(-1).float().mean()),
            "seconds_per_window": seconds / windows,
        }
        if quantize:
            row["batch_independent"] = float((_answers(model, processor, clips, 1) == free).all(-1).float().mean())
        result[name] = row
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sizes", nargs="*", default=["tiny", "mid"])
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args()
    for size in args.sizes:
        print(json.dumps(measure(size, args.windows)))


if __name__ == "__main__":
    main()
