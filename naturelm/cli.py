"""The `naturelm` command: `convert` an original checkpoint, `infer` over recordings, `evaluate` on BEANS-Zero."""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

from .convert import DTYPES, ConversionError, convert
from .evaluation.commands import add_evaluate_parser
from .evaluation.errors import EvaluationError
from .loading import RELEASED_BASE_MODEL, RELEASED_MODEL, WeightsUnavailableError, load_model

AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".opus"}
SAMPLING_RATE = 16000


def _convert(args: argparse.Namespace) -> None:
    output = convert(
        args.original_dir, args.output_dir, args.base_model, args.qformer_config, args.merging_alpha, args.dtype
    )
    print(f"Wrote {output}")


def _audio_files(paths: list[str]) -> list[Path]:
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        else:
            files.append(path)
    return files


def _read(path: Path) -> np.ndarray:
    """Mono float32 at 16 kHz."""
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    return soxr.resample(audio, rate, SAMPLING_RATE) if rate != SAMPLING_RATE else audio


def _infer(args: argparse.Namespace) -> None:
    if args.smoke:
        print("SMOKE MODE: a tiny random NatureLM model, not the released weights; answers are meaningless.",
              file=sys.stderr)
    model, processor = load_model(
        args.model, args.base_model, DTYPES[args.dtype], args.merging_alpha, smoke=args.smoke
    )
    window = int(args.window * SAMPLING_RATE)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": args.query}]}],
        add_generation_prompt=True, tokenize=False,
    )
    out = open(args.output, "w") if args.output else sys.stdout
    for path in _audio_files(args.inputs):
        try:
            audio = _read(path)
            if audio.size == 0:
                raise ValueError("the file holds no audio samples")
        except Exception as error:  # a bad file is a reported row, never the end of the run
            out.write(json.dumps({"file": str(path), "error": f"{type(error).__name__}: {error}"}) + "\n")
            continue
        starts = list(range(0, len(audio), window))
        for first in range(0, len(starts), args.batch_size):
            chunk = starts[first : first + args.batch_size]
            batch = processor(
                text=[prompt] * len(chunk), audio=[audio[s : s + window] for s in chunk], sampling_rate=SAMPLING_RATE
            )
            with torch.inference_mode():
                generated = model.generate(
                    **batch, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=False
                )
            texts = processor.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            for start, text in zip(chunk, texts):
                end = min(start + window, len(audio))
                row = {"file": str(path), "start": start / SAMPLING_RATE, "end": end / SAMPLING_RATE,
                       "text": text.strip()}
                out.write(json.dumps(row) + "\n")
            out.flush()
    if out is not sys.stdout:
        out.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="naturelm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    conv = commands.add_parser("convert", help="convert an original NatureLM-audio checkpoint to a HF folder")
    conv.add_argument("original_dir", help="folder with the original config.json + model.safetensors (or model.pt)")
    conv.add_argument("output_dir")
    conv.add_argument("--base-model", required=True, help="base Llama folder or hub id (LLM config, tokenizer, "
                      "and the frozen weights for the hub layout)")
    conv.add_argument("--qformer-config", help="JSON with the Q-Former sizes (default: bert-base, as the original)")
    conv.add_argument("--merging-alpha", type=float, default=1.0, help="LoRA scale factor (default 1)")
    conv.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    conv.set_defaults(func=_convert)

    infer = commands.add_parser("infer", help="answer a question about every window of some recordings (JSONL)")
    infer.add_argument("inputs", nargs="+", help="audio files or folders (searched recursively)")
    infer.add_argument("--query", default="What is the common name for the focal species in the audio? Answer:")
    infer.add_argument("--model", default=RELEASED_MODEL,
                       help="converted folder, original checkpoint folder or hub id (default: the released model)")
    infer.add_argument("--base-model", default=RELEASED_BASE_MODEL, help="base Llama for original checkpoints")
    infer.add_argument("--window", type=float, default=10.0, help="window length and hop in seconds")
    infer.add_argument("--batch-size", type=int, default=8)
    infer.add_argument("--num-beams", type=int, default=1)
    infer.add_argument("--max-new-tokens", type=int, default=50)
    infer.add_argument("--merging-alpha", type=float, default=None)
    infer.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    infer.add_argument("--output", help="JSONL file (default: standard output)")
    infer.add_argument("--smoke", action="store_true",
                       help="run on a tiny random model instead of the released weights (pipeline check only)")
    infer.set_defaults(func=_infer)

    add_evaluate_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (WeightsUnavailableError, ConversionError, EvaluationError) as error:
        print(f"naturelm: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
