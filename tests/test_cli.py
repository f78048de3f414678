"""The `naturelm` command as a user runs it."""

import json
import os
import shutil
import subprocess
import sys

import torch


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


def test_freed_memory_stays_mapped_after_tuning(tmp_path):
    """Without the tuning glibc unmaps a freed 256 MB tensor at once; with it the pages stay for the next one."""
    script = (
        "import sys, torch\n"
        "from naturelm.loading import keep_freed_memory_mapped\n"
        "assert sys.argv[1] == '0' or keep_freed_memory_mapped()\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "before = rss(); block = torch.ones(64 * 2**20); del block\n"
        "print(rss() - before)\n"
    )
    kept = {flag: int(subprocess.run([sys.executable, "-c", script, flag], capture_output=True, text=True,
                                     check=True).stdout) for flag in ("0", "1")}
    assert kept["0"] < 2**27 < kept["1"]


def test_load_model_merges_the_adapter_for_inference(reference):
    from naturelm.loading import load_model
    from naturelm.pipeline_naturelm import build_prompt

    model, processor = load_model("unused", smoke=True)
    merged, _ = load_model("unused", smoke=True, merge_adapter=True)
    assert model._lora_layers() and not merged._lora_layers()
    batch = processor(text=build_prompt(processor, "Caption the audio."), audio=reference["waveform"][0].numpy(),
                      sampling_rate=16000)
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, model(**batch).logits, atol=1e-5, rtol=1e-5)
