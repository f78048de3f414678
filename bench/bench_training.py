"""Training throughput of the tiny NatureLM (samples per second), through the real training script's pipeline.

Builds a tiny random NatureLM folder and a dataset over the recordings in ../shared/audio (or any folder given), then
times `training/sft_naturelm.py`'s trainer: the whole pipeline (decoding, cropping, augmentation, fbank, forward,
backward, optimizer), and the model step alone on one prepared batch. Not a test: the numbers depend on the machine.

    python bench/bench_training.py [--audio-dir DIR] [--steps 20] [--batch-size 4] [--threads 2] [--augment]
"""

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch

from naturelm.testing_utils import tiny_model_and_processor
from naturelm.training.audio import AUDIO_EXTENSIONS

REPO = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("sft_naturelm", REPO / "training" / "sft_naturelm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio-dir", type=Path, default=REPO.parent / "shared" / "audio")
    parser.add_argument("--tokenizer-dir", type=Path, default=REPO.parent / "shared" / "parity" / "base_llama",
                        help="a Llama 3 tokenizer folder (default: the parity fixture's; else llama-models' BPE)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--augment", action="store_true", help="noise (from the same folder), mixup, replacement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    clips = sorted(p for p in args.audio_dir.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS)
    if not clips:
        raise SystemExit(f"No recordings in {args.audio_dir}.")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, processor = tiny_model_and_processor(args.tokenizer_dir if args.tokenizer_dir.is_dir() else None)
        model.save_pretrained(tmp / "model")
        processor.save_pretrained(tmp / "model")
        (tmp / "data").mkdir()
        lines = ["file_name,instruction,output,task"] + [
            f"{clip},What is the common name for the focal species in the audio? Answer:,Species {i},"
            f"{'common-name-detection' if i % 2 else 'common-name-classification'}" for i, clip in enumerate(clips)]
        (tmp / "data" / "metadata.csv").write_text("\n".join(lines) + "\n")

        augment = ["--noise_dirs", str(args.audio_dir), "--noise_prob", "0.4", "--mixup_prob", "0.45",
                   "--noise_replace_prob", "0.1"] if args.augment else []
        sft = _script()
        parsed = sft.make_parser().parse_args_and_config([
            "--model_name_or_path", str(tmp / "model"), "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
            "--train_audio_encoder", "true", "--datasets", str(tmp / "data"), *augment,
            "--output_dir", str(tmp / "out"), "--max_steps", str(args.steps),
            "--per_device_train_batch_size", str(args.batch_size), "--dataloader_num_workers", str(args.workers),
            "--use_cpu", str(not torch.cuda.is_available()), "--bf16", "false", "--gradient_checkpointing", "false",
            "--save_strategy", "no", "--report_to", "none", "--logging_steps", str(args.steps),
            "--disable_tqdm", "true",
        ])
        trainer = sft.build_trainer(*parsed)
        metrics = trainer.train().metrics

        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        trainer.training_step(trainer.model, dict(batch))  # warm-up
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.training_step(trainer.model, dict(batch))
        model_rate = args.steps * args.batch_size / (time.perf_counter() - start)

    device = "cuda" if torch.cuda.is_available() else f"cpu, {args.threads} thread(s)"
    print(f"tiny NatureLM, batch {args.batch_size}, {args.steps} steps, {device}, {args.workers} loader worker(s),"
          f" augmentation {'on' if args.augment else 'off'}")
    print(f"  whole pipeline: {metrics['train_samples_per_second']:.2f} samples/s")
    print(f"  model step (forward + backward on a prepared batch): {model_rate:.2f} samples/s")


if __name__ == "__main__":
    main()
