"""What a hostile or careless user does to a run (issue 19): resume with other settings or another spelling of the
folder, two runs on one output, outputs by extension, odd file names, mistyped label files, `None` answers in CSV
training data, unwritable outputs, Ctrl-C, and broken predictions files. Each case asserts the exit code and the one
line a user reads; the model is the tiny random one (`--smoke`)."""

import csv
import errno
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile

from naturelm.cli import main
from naturelm.infer import INFER_FIELDS, RAVEN_COLUMNS

FIELDS = {"file", "start", "end", "answer", "probabilities", "error"}  # the names, in every format


def _env(tmp_path) -> dict:
    return {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "naturelm.cli", *args]


def _without_root_powers(command: list[str]) -> list[str]:
    """Root reads and writes whatever the file modes say; drop those capabilities so the kernel refuses as it
    refuses a user."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE for this test")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *command]


@pytest.fixture(scope="module")
def clips(audio_dir, tmp_path_factory) -> Path:
    """The two shortest shared recordings (of several windows between them), in a folder of their own."""
    folder = tmp_path_factory.mktemp("clips")
    for path in sorted(audio_dir.iterdir(), key=lambda p: soundfile.info(p).duration)[:2]:
        shutil.copy(path, folder / path.name)
    return folder


def _infer(*args: str) -> list[str]:
    return ["infer", *args, "--smoke", "--max-new-tokens", "2", "--no-progress"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- resume identity ---------------------------------------------------------------------------------------------------

def test_resume_with_the_folder_spelled_otherwise_runs_nothing_again(clips, tmp_path, monkeypatch, capsys):
    output = tmp_path / "out.jsonl"
    monkeypatch.chdir(clips.parent)
    assert main(_infer(clips.name, "--output", str(output))) == 0
    before = output.read_bytes()
    assert main(_infer(str(clips), "--output", str(output), "--resume")) == 0
    assert "naturelm: 0 files, 0 windows" in capsys.readouterr().err
    assert output.read_bytes() == before


def test_resume_with_other_settings_is_refused_and_names_them(clips, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    assert main(_infer(str(clips), "--output", str(output))) == 0
    before, journal = output.read_bytes(), output.with_name(output.name + ".progress").read_bytes()
    capsys.readouterr()
    assert main(_infer(str(clips), "--output", str(output), "--resume", "--query", "Another question?",
                       "--window", "5")) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "query" in message and "window" in message
    assert "Another question?" in message
    assert main(_infer(str(clips), "--output", str(output), "--resume", "--labels", "a,b")) == 2
    assert "labels" in capsys.readouterr().err
    assert output.read_bytes() == before
    assert output.with_name(output.name + ".progress").read_bytes() == journal


def test_resume_without_a_journal_leaves_the_output_alone(clips, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    output.write_text('{"precious": "results from elsewhere"}\n')
    assert main(_infer(str(clips), "--output", str(output), "--resume")) == 2
    assert "no journal" in capsys.readouterr().err
    assert output.read_text() == '{"precious": "results from elsewhere"}\n'


def test_a_torn_last_journal_line_is_recovered(clips, tmp_path, capsys):
    reference, torn = tmp_path / "reference.csv", tmp_path / "torn.csv"
    assert main(_infer(str(clips), "--output", str(reference))) == 0
    assert main(_infer(str(clips), "--output", str(torn))) == 0
    journal = torn.with_name(torn.name + ".progress")
    lines = journal.read_text().splitlines(keepends=True)
    assert len(lines) == 3  # settings and one line per file
    journal.write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])  # killed while journaling file 2
    capsys.readouterr()
    assert main(_infer(str(clips), "--output", str(torn), "--resume")) == 0
    assert "naturelm: 1 files" in capsys.readouterr().err  # only the file whose line was torn ran again
    assert torn.read_bytes() == reference.read_bytes()


def test_a_second_run_on_a_locked_output_refuses(clips, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    assert main(_infer(str(clips), "--output", str(output))) == 0
    before = output.read_bytes()
    with open(output.with_name(output.name + ".progress"), "a") as journal:
        fcntl.flock(journal.fileno(), fcntl.LOCK_EX)  # what a first run holds while it runs
        for flag in ("--overwrite", "--resume"):
            assert main(_infer(str(clips), "--output", str(output), flag)) == 2
            assert "another naturelm run is writing" in capsys.readouterr().err
            assert output.read_bytes() == before
    assert main(_infer(str(clips), "--output", str(output), "--overwrite")) == 0


def test_embed_resumes_from_its_journal(clips, tmp_path, capsys):
    output = tmp_path / "embeddings.parquet"
    args = ["embed", str(clips), "--smoke", "--no-progress", "--output", str(output)]
    assert main(args) == 0
    reference = pq.read_table(output).to_pydict()
    journal = output.with_name(output.name + ".progress")
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:-1]))  # killed before the last file
    output.unlink()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "naturelm: 1 files" in capsys.readouterr().err
    resumed = pq.read_table(output).to_pydict()
    # The resumed file ran in a batch of its own: vectors agree to float rounding, everything else exactly.
    np.testing.assert_allclose(resumed.pop("llm_embedding"), reference.pop("llm_embedding"), rtol=1e-5, atol=1e-6)
    assert resumed == reference
    assert main([*args, "--resume", "--window", "4"]) == 2


def test_evaluation_resume_goes_through_the_journal(tmp_path, capsys):
    from naturelm.evaluation.errors import EvaluationError
    from naturelm.evaluation.predictions import PredictionsWriter

    output = tmp_path / "results"
    output.mkdir()
    (output / "predictions.jsonl").write_text('{"id": "x", "dataset_name": "esc50", "prediction": "a", "label": "a"}\n')
    assert main(["evaluate", "beans-zero", "--smoke", "--dataset", str(tmp_path / "none"), "--output-dir",
                 str(output), "--resume"]) == 2
    assert "no journal" in capsys.readouterr().err
    path = tmp_path / "predictions.jsonl"
    with PredictionsWriter(path, {"limit": 1}) as writer:
        writer.write([{"id": "x", "dataset_name": "esc50", "prediction": "a", "label": "a"}])
    with pytest.raises(EvaluationError, match="limit"):
        PredictionsWriter(path, {"limit": 2}, resume=True)
    with path.open("a") as handle:
        handle.write('{"id": "y", "dataset_name": "esc5')  # written, not journaled: a kill
    with PredictionsWriter(path, {"limit": 1}, resume=True) as writer:
        assert writer.done == {"x"}
    assert _lines(path) == [{"id": "x", "dataset_name": "esc50", "prediction": "a", "label": "a"}]


# -- outputs by extension --------------------------------------------------------------------------------------------

def test_every_format_has_the_same_fields_and_parquet_is_parquet(clips, tmp_path, capsys):
    outputs = {fmt: tmp_path / f"out.{fmt}" for fmt in ("jsonl", "csv", "parquet")}
    for output in outputs.values():
        assert main(_infer(str(clips), "--labels", "wolf,robin", "--output", str(output))) == 0
    rows = _lines(outputs["jsonl"])
    assert all(set(row) == FIELDS for row in rows) and set(INFER_FIELDS) == FIELDS
    assert all(row["answer"] == max(row["probabilities"], key=row["probabilities"].get) for row in rows)
    table = pq.read_table(outputs["parquet"])  # a real Parquet file
    assert set(table.column_names) == FIELDS
    parquet_rows = [{**row, "probabilities": dict(row["probabilities"])} for row in table.to_pylist()]
    assert parquet_rows == rows
    with open(outputs["csv"], newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert set(csv_rows[0]) == FIELDS and [r["answer"] for r in csv_rows] == [r["answer"] for r in rows]
    assert {c.lower().split(" (")[0] for c in RAVEN_COLUMNS} >= {"answer", "probabilities", "error"}


def test_unknown_or_contradicting_extensions_are_refused(clips, tmp_path, capsys):
    for args in (["--output", str(tmp_path / "out.xlsx")], ["--output", str(tmp_path / "out.csv"), "--format",
                                                            "jsonl"], ["--format", "parquet"]):
        assert main(_infer(str(clips), *args)) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_multi_file_raven_tables_place_each_selection(clips, tmp_path):
    output = tmp_path / "selections.txt"
    assert main(_infer(str(clips), "--output", str(output))) == 0
    with open(output, newline="") as handle:
        table = list(csv.DictReader(handle, delimiter="\t"))
    files = sorted(clips.iterdir())
    first = [r for r in table if r["Begin File"] == files[0].name]
    second = [r for r in table if r["Begin File"] == files[1].name]
    assert table == first + second and first and second
    duration = soundfile.info(files[0]).frames / soundfile.info(files[0]).samplerate
    assert float(first[-1]["End Time (s)"]) == pytest.approx(duration, abs=1e-3)
    for row in first + second:
        offset = 0.0 if row in first else duration
        assert float(row["Begin Time (s)"]) == pytest.approx(offset + float(row["File Offset (s)"]), abs=1e-3)
    assert float(second[0]["Begin Time (s)"]) == pytest.approx(duration, abs=1e-3)


def test_names_with_tabs_and_newlines_cannot_break_a_table(clips, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    name = "bird\tcall\nnumber 2.wav"
    shutil.copy(sorted(clips.iterdir())[0], folder / name)
    raven, table = tmp_path / "odd.txt", tmp_path / "odd.csv"
    for output in (raven, table):
        assert main(_infer(str(folder), "--output", str(output))) == 0
    rows = raven.read_text().splitlines()
    assert all(line.count("\t") == len(RAVEN_COLUMNS) - 1 for line in rows)
    assert rows[1].split("\t")[RAVEN_COLUMNS.index("Begin File")] == "bird call number 2.wav"
    with open(table, newline="") as handle:
        assert {r["file"] for r in csv.DictReader(handle)} == {str(folder / name)}


def test_a_label_file_that_does_not_exist_is_a_usage_error(clips, tmp_path, capsys):
    for value in ("site_species.txt", str(tmp_path / "labels"), "lists/site_species"):
        assert main(_infer(str(clips), "--labels", value, "--output", str(tmp_path / "out.jsonl"))) == 2
        assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


# -- training data -----------------------------------------------------------------------------------------------------

def test_none_is_an_answer_and_an_empty_answer_is_empty(audio_dir, tmp_path):
    from naturelm.training.arguments import AudioDatasetConfig
    from naturelm.training.data import load_text_audio_dataset
    from naturelm.training.transform import SkippedRow, TextAudioTransform

    clip = min(audio_dir.glob("*.wav"), key=lambda p: soundfile.info(p).duration)
    folder = tmp_path / "data"
    folder.mkdir()
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows([["file_name", "instruction", "output"], [str(clip), "What is calling?", "None"],
                          [str(clip), "What is calling?", ""], [str(clip), "What is calling?", "NA"]])
    rows = [dict(row) for row in load_text_audio_dataset(AudioDatasetConfig(path=str(folder)))]
    assert [row["output"] for row in rows] == ["None", "", "NA"]
    transform = TextAudioTransform(seed=0)
    assert transform.prepare(rows[0], transform._rng(rows[0]))["output"] == "None"
    with pytest.raises(SkippedRow) as skipped:
        transform.prepare(rows[1], transform._rng(rows[1]))
    assert skipped.value.reason == "empty_answer"


# -- exit codes and messages -----------------------------------------------------------------------------------------

def test_outputs_that_cannot_be_written_give_one_line_and_code_2(clips, tmp_path, capsys):
    (tmp_path / "folder.jsonl").mkdir()
    for output, words in ((tmp_path / "missing" / "out.jsonl", "does not exist"),
                          (tmp_path / "folder.jsonl", "is a directory")):
        assert main(_infer(str(clips), "--output", str(output))) == 2
        message = capsys.readouterr().err.strip().splitlines()
        assert len(message) == 1 and words in message[0]


def test_a_read_only_folder_and_an_unreadable_file(clips, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    result = subprocess.run(_without_root_powers(_cli(*_infer(str(clips), "--output", str(locked / "out.jsonl")))),
                            env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "permission denied" in result.stderr.splitlines()[-1]

    folder = tmp_path / "inputs"
    shutil.copytree(clips, folder)
    secret = sorted(folder.iterdir())[0]
    secret.chmod(0)
    output = tmp_path / "out.jsonl"
    result = subprocess.run(_without_root_powers(_cli(*_infer(str(folder), "--output", str(output)))),
                            env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    errors = {Path(r["file"]).name: r["error"] for r in _lines(output) if r["error"]}
    assert list(errors) == [secret.name] and "permission denied" in errors[secret.name]
    assert "corrupt" not in errors[secret.name]


def test_a_full_disk_gives_code_3_and_resumes(clips, tmp_path, monkeypatch, capsys):
    reference, output = tmp_path / "reference.jsonl", tmp_path / "out.jsonl"
    assert main(_infer(str(clips), "--output", str(reference))) == 0
    real_fsync, calls = os.fsync, []

    def full_after_the_first_file(fd: int) -> None:
        calls.append(fd)
        if len(calls) > 4:  # journal settings, header, first file's rows, its journal line
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_after_the_first_file)
    capsys.readouterr()
    assert main(_infer(str(clips), "--output", str(output))) == 3
    message = capsys.readouterr().err.strip().splitlines()
    assert "disk is full" in message[-1] and "Traceback" not in "".join(message)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main(_infer(str(clips), "--output", str(output), "--resume")) == 0
    assert output.read_bytes() == reference.read_bytes()


def _ctrl_c_as_in_a_terminal() -> None:
    """A command started in the background inherits an ignored SIGINT; a terminal's foreground command does not."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_prints_the_resume_command_and_exits_130(audio_dir, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for path in sorted(audio_dir.iterdir()):
        shutil.copy(path, folder / path.name)
    output = tmp_path / "out.jsonl"
    args = ["infer", str(folder), "--smoke", "--batch-size", "1", "--max-new-tokens", "30", "--no-progress",
            "--output", str(output), "--overwrite"]
    process = subprocess.Popen(_cli(*args), env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, preexec_fn=_ctrl_c_as_in_a_terminal)
    journal = output.with_name(output.name + ".progress")
    deadline = time.monotonic() + 300
    while not (journal.exists() and len(journal.read_text().splitlines()) >= 2):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    last = stderr.strip().splitlines()[-1]
    command = shlex.split(last.partition("continue with: ")[2])
    assert command == ["naturelm", *[a for a in args if a != "--overwrite"], "--resume"]
    finished = len(journal.read_text().splitlines()) - 1
    assert finished < len(list(folder.iterdir())), "the interrupt must land mid-run"
    assert main(command[1:]) == 0  # the printed command, as is (in this process: no signal needed now)
    rows = _lines(output)
    windows = [(r["file"], r["start"]) for r in rows]
    assert len(windows) == len(set(windows)) and {r["file"] for r in rows} == {str(p) for p in folder.iterdir()}


def _predictions(beans_metrics_dir: Path) -> list[bytes]:
    return [line for line in (beans_metrics_dir / "predictions.jsonl").read_bytes().splitlines() if line.strip()]


def test_score_reports_bad_lines_by_number(beans_metrics_dir, tmp_path, capsys):
    good = _predictions(beans_metrics_dir)[:6]
    path = tmp_path / "predictions.jsonl"
    nested = b"[" * 200000 + b"]" * 200000
    path.write_bytes(b"\n".join([good[0], good[1][:-2] + b"\xff\"}", nested, *good[2:]]) + b"\n")
    assert main(["evaluate", "score", str(path)]) == 0
    report = json.loads(path.with_name("predictions.metrics.json").read_text())
    assert {row["line"]: row["reason"].split(" (")[0] for row in report["bad_rows"]} == {
        2: "not UTF-8", 3: "not valid JSON"}
    assert sum(report["num_scored"].values()) == len(good) - 1


def test_score_exits_1_when_nothing_could_be_scored(tmp_path, capsys):
    for content in (b"", b"not json\n{\"id\": 1}\n"):
        path = tmp_path / "predictions.jsonl"
        path.write_bytes(content)
        assert main(["evaluate", "score", str(path)]) == 1
        assert "nothing in" in capsys.readouterr().err
