"""The `naturelm` command as a user runs it."""

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch


def _run(args, tmp_path, **env):
    environment = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), **env}
    return subprocess.run([sys.executable, "-m", "naturelm.cli", *args], capture_output=True, text=True,
                          env=environment, timeout=600)


def test_help_and_argument_errors_load_no_model_code(tmp_path):
    """`naturelm --help` (and every subcommand's) answers without importing torch or transformers: each command
    imports what it runs."""
    probe = ("import sys\nfrom naturelm.cli import main\n"
             "commands = [[], ['infer'], ['embed'], ['convert'], ['evaluate', 'beans-zero'], ['evaluate', 'score']]\n"
             "for args in commands:\n"
             "    try:\n        main([*args, '--help'])\n    except SystemExit as done:\n        assert done.code == 0\n"
             "heavy = sorted(name for name in ('torch', 'transformers', 'numpy') if name in sys.modules)\n"
             "print('heavy:', heavy)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HOME": str(tmp_path / "hf_home")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--quantize" in result.stdout and "--max-new-tokens" in result.stdout
    assert "--min-new-tokens" not in result.stdout  # a benchmark's option, not the product's
    assert result.stdout.splitlines()[-1] == "heavy: []"


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
    assert all(isinstance(r["answer"], str) for r in good)
    errors = {os.path.basename(r["file"]): r["error"] for r in rows if r["error"]}
    assert set(errors) == {"empty.wav", "folder.wav"}  # notes.txt is not audio and is not picked up


def test_the_loader_merges_the_adapter_for_inference(reference):
    from naturelm.loading import load
    from pipeline_naturelm import build_prompt

    model, processor = load(smoke=True, merge_adapter=False)
    merged, _ = load(smoke=True)
    assert model._lora_layers() and not merged._lora_layers()
    batch = processor(text=build_prompt(processor, "Caption the audio."), audio=reference["waveform"][0].numpy(),
                      sampling_rate=16000)
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, model(**batch).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("native_bf16", [False, True])
def test_audio_encoder_runs_in_fp32_on_a_cpu_without_native_bf16(reference, monkeypatch, native_bf16):
    from naturelm.loading import audio_encoder_to_fp32_without_native_bf16, load
    from pipeline_naturelm import AudioWindow, build_prompt, generate_answers

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    model, processor = load(smoke=True, merge_adapter=False)
    reference_model = copy.deepcopy(model).to(torch.bfloat16).float()  # the same bf16-rounded weights, all fp32
    model = model.to(torch.bfloat16)
    assert audio_encoder_to_fp32_without_native_bf16(model) is not native_bf16
    expected = torch.float32 if not native_bf16 else torch.bfloat16
    assert model.model.audio_tower.dtype == model.model.audio_projector.linear.weight.dtype == expected
    assert model.model.language_model.dtype == torch.bfloat16
    clip = reference["waveform"][0].numpy()
    features = processor.feature_extractor(clip, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        embeds = model.get_audio_features(features).pooler_output
        if not native_bf16:
            assert torch.equal(embeds, reference_model.get_audio_features(features).pooler_output)
    window = AudioWindow(0.0, 10.0, clip, build_prompt(processor, "Caption the audio."))
    assert len(generate_answers(model, processor, [window], max_new_tokens=3, do_sample=False)) == 1
