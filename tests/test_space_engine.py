"""The Space's settings and checks, in process: what an owner sets and what a visitor gets wrong."""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from audio_fixture import num_windows

pytest.importorskip("gradio", reason="needs the `space` extra: pip install -e '.[space]'")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "space"))
import engine  # noqa: E402
import gradio as gr  # noqa: E402

from naturelm.loading import RELEASED_MODEL  # noqa: E402
from processing_naturelm import AUDIO_SPAN  # noqa: E402


def test_settings_come_from_the_environment_with_clear_errors(tmp_path):
    settings = engine.Settings.from_env({"NATURELM_MODEL": "tiny", "NATURELM_MAX_SECONDS": "90",
                                         "NATURELM_CONCURRENCY": "2", "NATURELM_DTYPE": "fp32"})
    assert settings.smoke and settings.max_seconds == 90.0 and settings.concurrency == 2 and settings.dtype == "fp32"
    defaults = engine.Settings.from_env({})
    assert defaults.model == RELEASED_MODEL and not defaults.smoke and defaults.dtype == "bf16"
    assert defaults.device == "cpu" and defaults.queue_size == 20 and defaults.max_file_mb == 50.0
    with pytest.raises(ValueError, match="NATURELM_MAX_SECONDS='ten' is not a float"):
        engine.Settings.from_env({"NATURELM_MAX_SECONDS": "ten"})
    with pytest.raises(ValueError, match="NATURELM_CONCURRENCY='0' must be at least 1"):
        engine.Settings.from_env({"NATURELM_CONCURRENCY": "0"})
    with pytest.raises(ValueError, match="NATURELM_DTYPE='float8'; choose one of bf16, fp16, fp32"):
        engine.Settings.from_env({"NATURELM_DTYPE": "float8"})


def test_merging_alpha_default_is_read_from_the_saved_config(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "naturelm", "merging_alpha": 0.4}')
    assert engine.default_alpha(engine.Settings(model=str(tmp_path))) == 0.4
    assert engine.default_alpha(engine.Settings(model=RELEASED_MODEL)) == 1.0  # a hub id: not read before loading
    assert engine.default_alpha(engine.Settings(model="tiny")) == 1.0


def test_gpu_jobs_go_through_spaces_gpu_only_when_it_is_there(monkeypatch):
    def job(x):
        return x

    monkeypatch.setattr(engine, "spaces", None)
    assert engine.gpu(duration=30)(job) is job

    calls = []

    class FakeSpaces:  # the `spaces` package's decorator factory, as on ZeroGPU
        @staticmethod
        def GPU(duration):
            calls.append(duration)
            return lambda function: ("on the GPU", function)

    monkeypatch.setattr(engine, "spaces", FakeSpaces)
    assert engine.gpu(duration=engine._window_seconds)(job) == ("on the GPU", job)
    assert calls == [engine._window_seconds]


def test_zero_gpu_time_grows_with_the_windows(audio_recordings):
    longest = max(audio_recordings, key=lambda r: r.header_seconds)
    robin = str(longest.path)
    every_10, every_1 = num_windows(longest.header_seconds, 10, 10), num_windows(longest.header_seconds, 10, 1)
    assert every_1 > every_10 > 1, f"{longest.name} is too short for this test"
    assert engine._window_seconds(robin, "q", None, 10.0, 10.0) == int(20 + 1.5 * every_10)
    assert engine._window_seconds(robin, "q", None, 10.0, 1.0) == int(20 + 1.5 * every_1)
    assert engine._window_seconds("/no/such/file.wav", "q", None, 10.0, 10.0) == int(20 + 1.5 * 120)


def test_labels_are_read_as_people_type_them():
    assert engine.parse_labels(" American Robin, Gray Wolf\n\nNone\nGray Wolf ") == ["American Robin", "Gray Wolf",
                                                                                      "None"]
    for text in ("", None, "only one", "same, same"):
        with pytest.raises(gr.Error, match="at least two labels"):
            engine.parse_labels(text)
    with pytest.raises(gr.Error, match="Got 51 labels; this Space scores at most 50"):
        engine.parse_labels(",".join(f"label {i}" for i in range(51)))


def test_a_conversation_puts_the_audio_with_the_first_question():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "What is it?"}]},  # as gr.Chatbot hands it over
        {"role": "assistant", "content": "A robin."},  # as an API user may write it
    ]
    assert engine.conversation(history, "Is it singing?") == [
        {"role": "user", "content": f"{AUDIO_SPAN} What is it?"},
        {"role": "assistant", "content": "A robin."},
        {"role": "user", "content": "Is it singing?"},
    ]
    assert engine.conversation([], "Caption the audio.") == [
        {"role": "user", "content": f"{AUDIO_SPAN} Caption the audio."}]
    # a first question that already holds the placeholder keeps it where it stands, once
    assert engine.conversation([], f"Listen: {AUDIO_SPAN} What is it?") == [
        {"role": "user", "content": f"Listen: {AUDIO_SPAN} What is it?"}]


def test_bad_recordings_get_a_reason(tmp_path, audio_recordings):
    settings = engine.Settings(max_seconds=30, max_file_mb=0.5)
    text = tmp_path / "notes.wav"
    text.write_text("not audio\n" * 50)
    with pytest.raises(gr.Error, match="notes.wav cannot be decoded"):
        engine.check_audio(str(text), settings)
    with pytest.raises(gr.Error, match="Upload or record a recording first"):
        engine.check_audio(None, settings)
    biggest = max(audio_recordings, key=lambda r: r.size_mb)
    cap = biggest.size_mb / 2
    with pytest.raises(gr.Error, match=re.escape(
            f"{biggest.name} is {biggest.size_mb:.1f} MB; this Space takes files up to {cap:g} MB")):
        engine.check_audio(str(biggest.path), engine.Settings(max_file_mb=cap))
    longest = max(audio_recordings, key=lambda r: r.header_seconds)
    cap = longest.header_seconds / 2
    with pytest.raises(gr.Error, match=re.escape(
            f"{longest.name} is {longest.header_seconds:.1f} s long; this Space takes recordings up to {cap:g} s")):
        engine.check_audio(str(longest.path), engine.Settings(max_seconds=cap))
    assert engine.check_audio(str(longest.path), engine.Settings(max_seconds=longest.header_seconds)) == pytest.approx(
        longest.header_seconds)
    short = tmp_path / "short.wav"
    soundfile.write(short, np.zeros(16000 * 4, np.float32), 16000)
    assert engine.check_audio(str(short), settings) == 4.0
    assert engine.describe_audio(str(short)) == "**short.wav**: 4.0 s at 16 kHz."
    assert "⚠️ notes.wav cannot be decoded" in engine.describe_audio(str(text))
    with pytest.raises(gr.Error, match="window must be between 0 and 10 s"):
        engine.check_windows(30.0, 12.0, 5.0, settings)


def test_space_metadata_and_requirements_match_the_package():
    import tomllib

    import yaml
    from packaging.requirements import Requirement
    from packaging.version import Version

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = {Requirement(r).name: Requirement(r) for r in project["dependencies"]
              + project["optional-dependencies"]["space"]}
    gradio = wanted.pop("gradio")
    for test_only in ("gradio-client", "gradio_client", "selenium"):
        wanted.pop(test_only, None)
    listed = [Requirement(line) for line in (root / "space" / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert {r.name: str(r.specifier) for r in listed} == {n: str(r.specifier) for n, r in wanted.items()}

    front = (root / "space" / "README.md").read_text().split("---\n")[1]
    meta = yaml.safe_load(front)
    assert meta["sdk"] == "gradio" and Version(meta["sdk_version"]) in gradio.specifier
    assert meta["app_file"] == "app.py" and (root / "space" / meta["app_file"]).is_file()
    assert {"title", "emoji", "colorFrom", "colorTo", "python_version", "suggested_hardware", "models", "datasets",
            "tags"} <= set(meta)
    assert "EarthSpeciesProject/NatureLM-audio" in meta["models"]


def test_the_queue_is_bounded_and_shared_by_every_model_job():
    import app

    demo = app.build_demo(engine.Settings(model="tiny", concurrency=2, queue_size=5))
    assert demo._queue.max_size == 5 and demo._queue.default_concurrency_limit == 2
    jobs = {d.api_name: d for d in demo.fns.values() if d.api_name in ("chat", "long_recording", "classify")}
    assert set(jobs) == {"chat", "long_recording", "classify"}
    assert {d.concurrency_id for d in jobs.values()} == {app.MODEL_JOBS}
    assert "smoke-warning" in {getattr(block, "elem_id", None) for block in demo.blocks.values()}


def test_a_model_that_cannot_be_loaded_says_what_to_set(tmp_path):
    holder = engine.ModelHolder(engine.Settings(model=str(tmp_path / "missing")))
    with pytest.raises(gr.Error, match=r"missing is not a model folder\. Set NATURELM_MODEL to a converted folder"):
        holder.get()
    assert not holder.loaded


def test_the_tiny_model_loads_once_on_first_use():
    holder = engine.ModelHolder(engine.Settings(model="tiny", dtype="fp32"))
    assert not holder.loaded  # nothing happens until a job needs it
    model, processor = holder.get()
    assert holder.get()[0] is model and model.device.type == "cpu" and not model.training
    assert type(processor).__name__ == "NatureLMProcessor"


@pytest.mark.parametrize("native_bf16", [False, True])
def test_the_space_places_the_model_as_every_tool_does(tiny_model_dir, monkeypatch, native_bf16):
    """On a CPU without native bf16 the Space's bf16 model gets an fp32 audio encoder (bf16 is emulated there, 7x
    slower), as the CLI's does; its adapter stays unmerged for the merging-α slider."""
    import torch

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    model, _ = engine.ModelHolder(engine.Settings(model=str(tiny_model_dir), dtype="bf16", device="cpu")).get()
    expected = torch.bfloat16 if native_bf16 else torch.float32
    assert model.model.audio_tower.dtype == model.model.audio_projector.linear.weight.dtype == expected
    assert model.model.language_model.dtype == torch.bfloat16
    assert model._lora_layers()
