"""The `naturelm` command as a user runs it."""

import json
import os
import shutil
import subprocess
import sys


def _run(args, tmp_path, **env):
    environment = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), **env}
    return subprocess.run([sys.executable, "-m", "naturelm.cli", *args], capture_output=True, text=True,
                          env=environment, timeout=600)


def test_infer_without_weights_explains_how_to_get_them(tmp_path, audio_dir):
    clip = next(iter(sorted(audio_dir.iterdir())))
    result = _run(["infer", str(clip)], tmp_path, HF_HUB_OFFLINE="1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "EarthSpeciesProject/NatureLM-audio" in result.stderr and "--smoke" in result.stderr
    assert "--model" in result.stderr and "naturelm convert" in result.stderr


def test_infer_with_a_missing_local_model_folder(tmp_path, audio_dir):
    clip = next(iter(sorted(audio_dir.iterdir())))
    result = _run(["infer", str(clip), "--model", str(tmp_path / "nowhere")], tmp_path, HF_HUB_OFFLINE="1")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "not a model folder" in result.stderr


def test_smoke_mode_runs_every_window_and_reports_bad_files(tmp_path, audio_dir):
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    clip = min(audio_dir.glob("*.wav"), key=lambda p: p.stat().st_size)
    shutil.copy(clip, recordings / clip.name)
    (recordings / "empty.wav").write_bytes(b"")
    (recordings / "folder.wav").mkdir()
    (recordings / "notes.txt").write_text("not audio")
    out = tmp_path / "out.jsonl"
    result = _run(["infer", str(recordings), "--smoke", "--max-new-tokens", "3", "--output", str(out)], tmp_path)
    assert result.returncode == 1, result.stderr  # some files failed
    assert "SMOKE MODE" in result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    good = [r for r in rows if r["file"].endswith(clip.name)]
    import soundfile

    duration = soundfile.info(clip).duration
    assert len(good) == -(-duration // 10) and abs(good[-1]["end"] - duration) < 1e-3
    assert all(isinstance(r["text"], str) for r in good)
    errors = {os.path.basename(r["file"]): r["error"] for r in rows if "error" in r}
    assert set(errors) == {"empty.wav", "folder.wav"}  # notes.txt is not audio and is not picked up
