"""`naturelm infer` / `naturelm embed` on folders, as users run them: kills, bad files, output formats."""

import csv
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
from cli_runner import run_cli


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "naturelm.cli", *args]


def _env(tmp_path) -> dict:
    return {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def recordings(audio_dir, tmp_path_factory):
    """All shared recordings (several windows each, wav and mp3, mono and stereo)."""
    folder = tmp_path_factory.mktemp("recordings")
    for path in sorted(audio_dir.iterdir()):
        shutil.copy(path, folder / path.name)
    return folder


def test_killed_run_resumes_to_byte_identical_output(recordings, tmp_path):
    args = ["infer", str(recordings), "--smoke", "--batch-size", "1", "--max-new-tokens", "8",
            "--no-progress"]
    files = len(list(recordings.iterdir()))
    for fmt in ("jsonl", "raven"):
        reference, killed = tmp_path / f"reference.{fmt}", tmp_path / f"killed.{fmt}"
        done = run_cli([*args, "--format", fmt, "--output", str(reference)])  # the kill needs a process; these not
        assert done.returncode == 0, done.stderr
        journal = killed.with_name(killed.name + ".progress")
        if fmt == "jsonl":  # a real kill
            process = subprocess.Popen(_command(*args, "--format", fmt, "--output", str(killed)),
                                       env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 300
            while time.time() < deadline and process.poll() is None:
                if journal.exists() and len(journal.read_text().splitlines()) >= 3:  # settings + 2 files
                    break
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            process.wait()
        else:  # what a kill leaves in the table format: two files journalled, the third one's rows half written
            lines = reference.with_name(reference.name + ".progress").read_text().splitlines(keepends=True)
            journal.write_text("".join(lines[:3]))
            cut = (json.loads(lines[2])["offset"] + json.loads(lines[3])["offset"]) // 2
            killed.write_bytes(reference.read_bytes()[:cut])
        finished_before_kill = len(journal.read_text().splitlines()) - 1
        assert 2 <= finished_before_kill < files, "the kill must land mid-run for this test to mean anything"

        resumed = run_cli([*args, "--format", fmt, "--output", str(killed), "--resume"])
        assert resumed.returncode == 0, resumed.stderr
        assert f"{files - finished_before_kill} files" in resumed.stderr  # only the rest was run
        assert killed.read_bytes() == reference.read_bytes()

    rows = [json.loads(line) for line in (tmp_path / "reference.jsonl").read_text().splitlines()]
    for path in recordings.iterdir():
        audio, rate = soundfile.read(path)
        windows = [r for r in rows if r["file"] == str(path)]
        assert len(windows) == -(-len(audio) // (10 * rate))
        assert [w["start"] for w in windows] == [10.0 * i for i in range(len(windows))]


def _bad_files(folder, good_wav) -> int:
    """Writes every kind of bad file we know of; returns how many."""
    rate = 16000
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is not audio\n" * 100)
    (folder / "random.mp3").write_bytes(np.random.default_rng(0).bytes(20000))
    (folder / "random.flac").write_bytes(np.random.default_rng(1).bytes(20000))
    (folder / "random.ogg").write_bytes(b"OggS" + np.random.default_rng(2).bytes(20000))
    (folder / "random.opus").write_bytes(np.random.default_rng(3).bytes(5000))
    (folder / "header_only.wav").write_bytes(good_wav.read_bytes()[:44])
    (folder / "truncated_header.wav").write_bytes(good_wav.read_bytes()[:20])
    soundfile.write(folder / "nan.wav", np.full(rate, np.nan, np.float32), rate, subtype="FLOAT")
    soundfile.write(folder / "inf.wav", np.r_[np.zeros(rate), np.inf].astype(np.float32), rate, subtype="FLOAT")
    (folder / "directory.wav").mkdir()
    (folder / "broken_link.wav").symlink_to(folder / "does_not_exist.wav")
    riff = b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 0, 0, 0, 0, 16)
    (folder / "zero_channels.wav").write_bytes(riff + b"data" + struct.pack("<I", 0))
    return 13


def test_bad_files_are_failed_rows_and_good_ones_still_run(audio_dir, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted(audio_dir.glob("*.wav"))[:1] + sorted(audio_dir.glob("*.mp3"))[:1]
    for path in good:
        shutil.copy(path, folder / path.name)
    bad = _bad_files(folder, good[0])
    output = tmp_path / "out.jsonl"
    result = run_cli(["infer", str(folder), "--smoke", "--max-new-tokens", "2", "--no-progress", "--output",
                      str(output)])
    assert result.returncode == 1, result.stderr  # partial failure
    assert "Traceback" not in result.stderr and f"{bad} failed" in result.stderr
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    failed = {os.path.basename(r["file"]): r["error"] for r in rows if r["error"]}
    assert len(failed) == bad and all(isinstance(reason, str) and reason for reason in failed.values())
    assert "directory" in failed["directory.wav"] and "empty" in failed["empty.wav"]
    assert "NaN" in failed["nan.wav"] and "NaN or infinite" in failed["inf.wav"]
    answered = {os.path.basename(r["file"]) for r in rows if r["answer"] is not None}
    assert answered == {p.name for p in good}


def test_raven_table_and_candidate_labels(audio_dir, tmp_path):
    clip = min(audio_dir.glob("*.mp3"), key=lambda p: soundfile.info(p).duration)
    labels = tmp_path / "labels.txt"
    labels.write_text("American Robin\nGreen Treefrog\nGray Wolf\n")
    output = tmp_path / "selections.txt"
    result = run_cli(["infer", str(clip), str(clip), "--smoke", "--labels", str(labels), "--no-progress", "--output",
                      str(output)])
    assert result.returncode == 0, result.stderr
    with open(output, newline="") as handle:
        table = list(csv.DictReader(handle, delimiter="\t"))
    assert list(table[0]) == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                              "High Freq (Hz)", "Begin File", "File Offset (s)", "answer", "probabilities", "error"]
    assert [int(r["Selection"]) for r in table] == list(range(1, len(table) + 1))
    assert all(r["answer"] in {"American Robin", "Green Treefrog", "Gray Wolf"} for r in table)
    assert all(float(r["Begin Time (s)"]) < float(r["End Time (s)"]) for r in table)
    assert {r["Begin File"] for r in table} == {clip.name}


def test_embed_writes_one_vector_per_window(audio_dir, tmp_path):
    clip = max(audio_dir.glob("*.mp3"), key=lambda p: soundfile.info(p).duration)
    output = tmp_path / "embeddings.npz"
    result = run_cli(["embed", str(clip), str(tmp_path / "missing.wav"), "--smoke", "--output", str(output)])
    assert result.returncode == 1 and "1 failed" in result.stderr
    data = np.load(output)
    audio, rate = soundfile.read(clip)
    windows = -(-len(audio) // (10 * rate))
    assert data["llm_embedding"].shape[0] == data["beats_embedding"].shape[0] == len(data["start"]) == windows
    assert np.isfinite(data["llm_embedding"]).all() and data["llm_embedding"].std() > 0
    assert set(data["path"]) == {str(clip)}

    parquet = tmp_path / "embeddings.parquet"
    result = run_cli(["embed", str(clip), str(tmp_path / "missing.wav"), "--smoke", "--output", str(parquet)])
    import pyarrow.parquet as pq

    assert result.returncode == 1, result.stderr
    table = pq.read_table(parquet).to_pydict()
    assert len(table["file"]) == windows + 1 and table["error"].count(None) == windows


def test_query_that_holds_the_audio_placeholder(audio_dir, tmp_path):
    """The audio goes where the query's placeholder stands (no second one): the same rows as the plain query."""
    from processing_naturelm import AUDIO_SPAN

    clip = min(audio_dir.glob("*.mp3"), key=lambda p: soundfile.info(p).duration)
    outputs = {}
    for name, query in [("plain", "Describe the sound."), ("placeholder", f"{AUDIO_SPAN} Describe the sound.")]:
        outputs[name] = tmp_path / f"{name}.jsonl"
        result = run_cli(["infer", str(clip), "--smoke", "--query", query, "--max-new-tokens", "3", "--no-progress",
                          "--output", str(outputs[name])])
        assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in outputs["placeholder"].read_text().splitlines()]
    assert rows and all(row["answer"] is not None and row["error"] is None for row in rows)
    assert outputs["placeholder"].read_bytes() == outputs["plain"].read_bytes()
    mid = tmp_path / "mid.jsonl"
    result = run_cli(["infer", str(clip), "--smoke", "--query", f"Listen: {AUDIO_SPAN} What is it?",
                      "--max-new-tokens", "3", "--no-progress", "--output", str(mid)])
    assert result.returncode == 0, result.stderr
    assert all(json.loads(line)["answer"] is not None for line in mid.read_text().splitlines())
