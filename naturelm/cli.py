"""The `naturelm` command: `convert` an original checkpoint, `infer` over recordings, `embed` them, `evaluate` on
BEANS-Zero, `serve` the model over HTTP."""

import argparse
import os
import shlex


import sys
from collections.abc import Callable
from pathlib import Path

from typing import TYPE_CHECKING

from .evaluation.commands import add_evaluate_parser
from .evaluation.errors import EvaluationError
from .journal import OutputError, UsageError
from .options import (
    DTYPE_NAMES,
    FORMATS,
    RELEASED_BASE_MODEL,
    RELEASED_MODEL,
    ModelFilesError,
    RayUnavailableError,
    WeightsUnavailableError,
    add_quantize_argument,
)

if TYPE_CHECKING:
    from .infer import ResultWriter, Summary

# Only what the parser needs is imported above (no torch, no transformers): `naturelm --help` and argument errors
# answer at once. Each command imports what it runs.


def _convert(args: argparse.Namespace) -> int:
    from .convert import convert

    output = convert(
        args.original_dir, args.output_dir, args.base_model, args.qformer_config, args.merging_alpha, args.dtype
    )
    print(f"Wrote {output}")
    return 0


def _load_kwargs(args: argparse.Namespace) -> dict:
    """`naturelm.loading.load`'s arguments from the command line (Ray actors take them as they are), after the smoke
    notice: a reader of the output must know when the answers come from random weights."""
    from .convert import DTYPES

    if args.smoke:
        print("SMOKE MODE: a tiny random NatureLM model, not the released weights; answers are meaningless.",
              file=sys.stderr)
    return dict(model=args.model, base_model=args.base_model, dtype=DTYPES[args.dtype],
                merging_alpha=args.merging_alpha, smoke=args.smoke, device=args.device, quantize=args.quantize)


def _load(args: argparse.Namespace):
    from .loading import load

    return load(**_load_kwargs(args))


LABEL_FILE_EXTENSIONS = (".txt", ".csv", ".tsv", ".json", ".lst", ".lines")


def _labels(value: str | None) -> list[str] | None:
    """`--labels` is a file with one label per line, or a comma-separated list. A single value that looks like a
    path (a folder separator or a file extension) but names no file is a mistyped path, not a label."""
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"--labels {value}: cannot read it ({error}).") from None
    elif "," not in value and ("/" in value or os.sep in value or path.suffix.lower() in LABEL_FILE_EXTENSIONS):
        raise UsageError(f"--labels {value}: no such file (for a single label with a slash or a dot, end it with a "
                         "comma: --labels 'a/b,').")
    else:
        lines = value.split(",")
    labels = [label.strip() for label in lines if label.strip()]
    if not labels:
        raise UsageError(f"--labels {value!r} holds no label.")
    return labels


def _settings(args: argparse.Namespace, **task: object) -> dict:
    """What makes two runs' rows comparable; `--resume` refuses a run whose settings differ."""
    from .journal import model_identity

    return {**model_identity(args.model, args.smoke), "base_model": args.base_model, "dtype": args.dtype,
            "merging_alpha": args.merging_alpha, "quantize": args.quantize, "window": args.window,
            "hop": args.hop or args.window, **task}


def _infer_settings(args: argparse.Namespace, labels: list[str] | None) -> dict:
    return _settings(args, task="labels" if labels else "generate", query=None if labels else _query(args), labels=labels,
                     decoding=_decoding(args))


def _infer(args: argparse.Namespace) -> int:
    if args.ray is not None:
        return _infer_on_ray(args)
    from audio_naturelm import find_audio_files

    from .infer import run

    files = find_audio_files(args.inputs)
    labels = _labels(args.labels)
    writer = _writer(args, _infer_settings(args, labels))
    return _write_run(writer, lambda: run(
        *_load(args), files, writer, _query(args), labels, args.window, args.hop, args.batch_size,
        progress=not args.no_progress, **_decoding(args),
    ))


def _query(args: argparse.Namespace) -> str:
    from pipeline_naturelm import DEFAULT_QUERY

    return DEFAULT_QUERY if args.query is None else args.query


def _write_run(writer: "ResultWriter", start: Callable[[], "Summary"]) -> int:
    """Runs a folder inference into `writer`, closes it whatever happens (what was written stays resumable) and
    reports the summary; the exit status says whether any file failed."""
    try:
        summary = start()
    finally:
        writer.close()
    print(f"naturelm: {summary}", file=sys.stderr)
    return 1 if summary.failed else 0


def _writer(args: argparse.Namespace, settings: dict) -> "ResultWriter":
    from .infer import ResultWriter, output_format

    fmt = output_format(args.output, args.format)
    return ResultWriter(Path(args.output) if args.output else None, fmt, args.resume, args.overwrite, settings)


def _decoding(args: argparse.Namespace) -> dict:
    """Decoding settings given on the command line; the others come from the checkpoint's generation config (the
    original's: 2 beams, ...)."""
    return {name: getattr(args, name) for name in ("num_beams", "max_new_tokens")
            if getattr(args, name) is not None}


def _infer_on_ray(args: argparse.Namespace) -> int:
    from .ray_infer import RayResources, connect, import_ray, list_audio_files, run_ray

    import_ray()  # before anything is written: a clear error if Ray is not installed
    if args.ray and Path(args.ray).exists():
        raise ValueError(f"--ray takes a cluster address, not {args.ray!r}: put --ray after the inputs, or write "
                         "--ray=ADDRESS.")
    if args.ray_gpus_per_actor > 0 and args.device == "cpu":
        raise ValueError("--ray-gpus-per-actor needs --device cuda (each actor sees only its own GPUs).")
    files = list_audio_files(args.inputs)
    labels = _labels(args.labels)
    writer = _writer(args, _infer_settings(args, labels))
    load_kwargs = _load_kwargs(args)
    resources = RayResources(args.ray_actors, args.ray_cpus_per_actor, args.ray_gpus_per_actor)

    def start() -> "Summary":
        connect(args.ray or None)
        return run_ray(files, writer, load_kwargs, _query(args), labels, args.window, args.hop, args.batch_size,
                       resources, progress=not args.no_progress, **_decoding(args))

    return _write_run(writer, start)


def _embed(args: argparse.Namespace) -> int:
    from audio_naturelm import find_audio_files

    from .embed import embed
    from .infer import EMBED_FIELDS, ResultWriter, output_format

    fmt = output_format(args.output, None, allowed=("parquet", "npz"))
    writer = ResultWriter(Path(args.output), fmt, args.resume, args.overwrite, _settings(args, task="embed"),
                          fields=EMBED_FIELDS)
    return _write_run(writer, lambda: embed(*_load(args), find_audio_files(args.inputs), writer, args.window,
                                            args.hop, args.batch_size, progress=not args.no_progress))


def _serve(args: argparse.Namespace) -> int:
    from .journal import model_identity
    from .serve import ServeSettings, serve  # FastAPI and uvicorn come with the [serve] extra

    settings = ServeSettings(
        host=args.host, port=args.port, api_key=args.api_key, allowed_dirs=[Path(d) for d in args.allow_path],
        allow_urls=args.allow_urls, max_batch_size=args.max_batch_size, batch_size=args.batch_size,
        max_wait_s=args.max_wait_ms / 1000, max_queue=args.max_queue, max_body_bytes=int(args.max_body_mb * 2**20),
        max_audio_seconds=args.max_audio_seconds,
    )
    settings.check()
    model, processor = _load(args)
    identity = model_identity(args.model, args.smoke)  # as the run journals record it
    name = "naturelm-smoke" if args.smoke else identity["model"]
    return serve(model, processor, settings, name, identity["revision"] or "unknown")


def _add_loading_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=RELEASED_MODEL,
                        help="converted folder, original checkpoint folder or hub id (default: the released model)")
    parser.add_argument("--base-model", default=RELEASED_BASE_MODEL, help="base Llama for original checkpoints")
    parser.add_argument("--merging-alpha", type=float, default=None, help="LoRA scale factor (default: the model's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps ...")
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="bf16")
    add_quantize_argument(parser)
    parser.add_argument("--smoke", action="store_true",
                        help="run on a tiny random model instead of the released weights (pipeline check only)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run into the same --output "
                        "(refused if its settings differ)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="audio files or folders (searched recursively by extension)")
    _add_loading_arguments(parser)
    parser.add_argument("--window", type=float, default=10.0, help="window length in seconds (default 10)")
    parser.add_argument("--hop", type=float, default=None, help="hop between windows in seconds (default: window)")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per batch, across files")


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
    conv.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="bf16")
    conv.set_defaults(func=_convert)

    infer = commands.add_parser("infer", help="answer a question about every window of some recordings")
    _add_model_arguments(infer)
    infer.add_argument("--query", help="the question asked of every window (default: the original's species "
                       "question, pipeline_naturelm.DEFAULT_QUERY)")
    infer.add_argument("--labels", help="candidate labels (a file, one per line, or a,b,c): score them instead of "
                       "generating; the answer is always one of them")
    infer.add_argument("--num-beams", type=int, help="beams (default: the checkpoint's generation config; 2 for "
                       "NatureLM, as the original decodes)")
    infer.add_argument("--max-new-tokens", type=int, help="longest answer (default: the checkpoint's; 300)")
    infer.add_argument("--output", help="results file (default: standard output)")
    infer.add_argument("--format", choices=FORMATS, help="jsonl (default), csv, raven (a Raven Pro selection "
                       "table) or parquet; guessed from the --output extension (.jsonl, .csv, .txt/.tsv for Raven, "
                       ".parquet); see docs/outputs.md")
    _add_run_arguments(infer)
    infer.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                       help="run on a Ray cluster (auto, host:6379, ray://host:10001; none: start a local Ray); "
                       "needs pip install 'naturelm[ray]'")
    infer.add_argument("--ray-actors", type=int, default=1, help="model actors (each loads the model once)")
    infer.add_argument("--ray-cpus-per-actor", type=float, default=1.0,
                       help="CPUs per actor (fractions such as 0.5 leave CPUs for the read tasks on small machines)")
    infer.add_argument("--ray-gpus-per-actor", type=float, default=0.0,
                       help="GPUs per actor (1: one actor per GPU; fractions share a GPU); with --device cuda")
    infer.set_defaults(func=_infer)

    embed = commands.add_parser("embed", help="per-window audio embeddings (LLM space and mean-pooled BEATs)")
    _add_model_arguments(embed)
    embed.add_argument("--output", required=True, help="a .parquet or .npz file")
    _add_run_arguments(embed)
    embed.set_defaults(func=_embed)

    add_evaluate_parser(commands)

    srv = commands.add_parser("serve", help="serve the model over HTTP: BEANS-Next predictions_v1 and OpenAI-style "
                              "chat completions (needs pip install 'naturelm[serve]'); see docs/serving.md")
    _add_loading_arguments(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; "
                     "any other needs --api-key)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--api-key", default=os.environ.get("NATURELM_API_KEY") or None,
                     help="bearer token callers must send (default: env NATURELM_API_KEY; none on 127.0.0.1)")
    srv.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                     help="let file_path audio be read from under DIR (repeatable; default: file_path refused)")
    srv.add_argument("--allow-urls", action="store_true",
                     help="fetch file_url audio (public addresses only; default: refused)")
    srv.add_argument("--max-batch-size", type=int, default=32, help="most items in one /predict call (413 above)")
    srv.add_argument("--batch-size", type=int, default=8, help="most items in one model call, across clients")
    srv.add_argument("--max-wait-ms", type=float, default=20.0,
                     help="how long a queued item waits for others to share its batch (default 20)")
    srv.add_argument("--max-queue", type=int, default=256, help="most items waiting (429 above)")
    srv.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body (413 above)")
    srv.add_argument("--max-audio-seconds", type=float, default=120.0,
                     help="longest clip accepted (the model hears its first 10 s, as the original does)")
    srv.set_defaults(func=_serve)
    return parser


def _resume_command(argv: list[str]) -> str | None:
    """The command that continues an interrupted run (None where nothing is resumable: output to the terminal)."""
    resumable = argv[:1] in (["infer"], ["embed"]) and any(a.startswith("--output") for a in argv)
    if not (resumable or argv[:2] == ["evaluate", "beans-zero"]):
        return None
    kept = [a for a in argv if a != "--overwrite"]
    return shlex.join(["naturelm", *kept, *([] if "--resume" in kept else ["--resume"])])


def main(argv: list[str] | None = None) -> int:
    """Exit codes (docs/outputs.md): 0 done, 1 some inputs failed, 2 usage, 3 environment or model, 130 interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        command = _resume_command(argv)
        print("naturelm: interrupted" + (f"; continue with: {command}" if command else "."), file=sys.stderr)
        return 130
    except ModelFilesError as error:  # exit 3: an environment or model error
        print(f"naturelm: {error}", file=sys.stderr)
        return 3
    except OutputError as error:
        print(f"naturelm: {error}", file=sys.stderr)
        return error.exit_code
    except (WeightsUnavailableError, EvaluationError, FileExistsError, ValueError,
            RayUnavailableError) as error:
        print(f"naturelm: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
