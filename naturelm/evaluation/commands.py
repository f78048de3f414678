"""`naturelm evaluate beans-zero` and `naturelm evaluate score`: argument parsing and wiring only; the work is done
by `dataset`, `runner` and `scoring`. Heavy imports happen inside the commands so that `naturelm infer` starts fast."""

import argparse
import json
import sys
from pathlib import Path

from ..options import DTYPE_NAMES, RELEASED_BASE_MODEL, RELEASED_MODEL, add_quantize_argument


PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"
TABLE_FILE = "metrics.md"
LABELS_FILE = "labels.json"


EVAL_PACKAGES = ("datasets", "evaluate", "Levenshtein")


def _require_eval_extra() -> None:
    """Stops with an installation hint when the `eval` extra is missing."""
    import importlib.util

    from .errors import EvaluationError

    missing = [name for name in EVAL_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise EvaluationError(
            f"`naturelm evaluate` needs {', '.join(missing)}: pip install 'naturelm[eval]' (or -e '.[eval]')."
        )


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_report(report, json_path: Path, table_path: Path | None) -> None:
    from .errors import EvaluationError

    table = report.format_table()
    try:
        report.write_json(json_path)
        if table_path is not None:
            table_path.write_text(table + "\n", encoding="utf-8")
    except OSError as error:
        message = f"Cannot write the metrics ({error}); choose a writable place (--output, --output-dir)."
        raise EvaluationError(message) from error
    print(table)
    _log(f"Wrote {json_path}" + (f" and {table_path}" if table_path is not None else ""))


def _beans_zero(args: argparse.Namespace) -> None:
    _require_eval_extra()
    import torch

    from ..convert import DTYPES
    from ..journal import UsageError, existing_output_check, model_identity
    from ..loading import load
    from .dataset import component_label_sets, iter_rows, load_beans_zero
    from .errors import EvaluationError
    from .runner import run_beans_zero
    from .scoring import score_file

    output_dir = Path(args.output_dir)
    predictions = output_dir / PREDICTIONS_FILE
    try:  # before the dataset and the model are loaded
        existing_output_check(predictions, args.resume, args.overwrite)
    except (UsageError, FileExistsError) as error:
        raise EvaluationError(str(error).replace("--output", "--output-dir")) from None
    dataset = load_beans_zero(args.dataset, args.split, args.streaming)
    if args.smoke:
        _log("SMOKE MODE: a tiny random NatureLM model, not the released weights; answers are meaningless.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = load(args.model, base_model=args.base_model, dtype=DTYPES[args.dtype],
                            merging_alpha=args.merging_alpha, smoke=args.smoke, device=device, quantize=args.quantize)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = run_beans_zero(
        model, processor, iter_rows(dataset, args.components, args.limit), predictions,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
        resume=args.resume, overwrite=args.overwrite, progress=_log,
        settings={**model_identity(args.model, args.smoke), "base_model": args.base_model, "dtype": args.dtype,
                  "merging_alpha": args.merging_alpha, "quantize": args.quantize,
                  "dataset": str(Path(args.dataset).resolve()) if Path(args.dataset).exists() else args.dataset,
                  "split": args.split, "components": args.components, "limit": args.limit},
    )
    _log(f"{summary.answered} row(s) answered, {summary.bad} bad, {summary.already_done} already in {predictions}.")
    label_sets = component_label_sets(dataset, args.components)
    if label_sets is not None:
        (output_dir / LABELS_FILE).write_text(json.dumps(label_sets, indent=1, ensure_ascii=False) + "\n")
    report = score_file(predictions, label_sets, args.spice_jar)
    report.bad_rows += summary.unrecorded_bad_rows
    if label_sets is not None:
        report.label_sets = f"dataset (every row of each component, saved in {LABELS_FILE})"
    _write_report(report, output_dir / METRICS_FILE, output_dir / TABLE_FILE)


def _score(args: argparse.Namespace) -> int:
    _require_eval_extra()
    from .scoring import read_label_sets, score_file

    label_sets = read_label_sets(args.labels) if args.labels else None
    report = score_file(args.predictions, label_sets, args.spice_jar)
    if args.labels:
        report.label_sets = f"file {args.labels}"
    predictions = Path(args.predictions)
    output = Path(args.output) if args.output else predictions.with_name(predictions.stem + ".metrics.json")
    _write_report(report, output, None)
    if not sum(report.num_scored.values()):
        _log(f"naturelm: nothing in {predictions} could be scored ({len(report.bad_rows)} bad row(s)).")
        return 1
    return 0


def _components(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def add_evaluate_parser(commands: argparse._SubParsersAction) -> None:
    """Adds `evaluate beans-zero` and `evaluate score` to the `naturelm` command."""

    evaluate = commands.add_parser("evaluate", help="BEANS-Zero benchmark: run a model, or score a predictions file")
    tasks = evaluate.add_subparsers(dest="evaluate_command", required=True)

    run = tasks.add_parser(
        "beans-zero",
        help="run the model over BEANS-Zero, write predictions (resumable), metrics and a table",
        description="Runs NatureLM-audio over BEANS-Zero as the original evaluation did (clips cut/padded to their "
        "component's length, the generic prompt for detection sets with > 8 labels, beam search with 2 beams) and "
        f"writes OUTPUT_DIR/{PREDICTIONS_FILE} (appended per batch), {METRICS_FILE}, {TABLE_FILE} and {LABELS_FILE}.",
    )
    run.add_argument("--dataset", default="EarthSpeciesProject/BEANS-Zero",
                     help="Hub id, `save_to_disk` folder, parquet file/folder/glob (default: the Hub dataset)")
    run.add_argument("--split", default="test")
    run.add_argument("--streaming", action="store_true", help="read rows as needed instead of loading the dataset")
    run.add_argument("--components", type=_components, help="comma-separated components, e.g. esc50,watkins")
    run.add_argument("--limit", type=int, help="at most this many rows per component")
    run.add_argument("--output-dir", default="beans_zero_results")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run: skip ids already answered")
    run.add_argument("--overwrite", action="store_true", help="start the predictions file again")
    run.add_argument("--model", default=RELEASED_MODEL,
                     help="converted folder, original checkpoint folder or hub id (default: the released model)")
    run.add_argument("--base-model", default=RELEASED_BASE_MODEL, help="base Llama for original checkpoints")
    run.add_argument("--dtype", choices=sorted(DTYPE_NAMES), default="bf16")
    add_quantize_argument(run)
    run.add_argument("--merging-alpha", type=float, default=None)
    run.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--max-new-tokens", type=int, help="default: the checkpoint's generation config (300)")
    run.add_argument("--num-beams", type=int, help="default: the checkpoint's generation config (2, as the original)")
    run.add_argument("--spice-jar", help="SPICE jar for captioning (default: $NATURELM_SPICE_JAR or pycocoevalcap's)")
    run.add_argument("--smoke", action="store_true",
                     help="run a tiny random model instead of the released weights (pipeline check only)")
    run.set_defaults(func=_beans_zero)

    score = tasks.add_parser(
        "score",
        help="metrics of any model's predictions JSONL (id, dataset_name, prediction, label)",
        description="Scores a predictions file exactly as the official beans-zero package (v1.0.0) does; bad rows "
        "are reported with their id and the rest is scored.",
    )
    score.add_argument("predictions", help="JSONL file with id, dataset_name, prediction, label per line")
    score.add_argument("--output", help="metrics JSON (default: PREDICTIONS stem + .metrics.json beside it)")
    score.add_argument("--labels", help=f"JSON {{component: [labels]}} (e.g. a run's {LABELS_FILE}); default: "
                       "each component's distinct references, as the official package")
    score.add_argument("--spice-jar", help="SPICE jar for captioning (default: $NATURELM_SPICE_JAR or pycocoevalcap's)")
    score.set_defaults(func=_score)


__all__ = ["add_evaluate_parser"]
