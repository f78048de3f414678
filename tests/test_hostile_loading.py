"""Broken model folders, as a careless copy, a crashed download or a hand edit leaves them: a tensor deleted (Llama,
Q-Former, BEATs, a LoRA B), config.json claiming a layer the weights lack, a mis-shaped weight, a truncated file, the
weights only as a pickled or truncated pytorch_model.bin, an adapter config without its weights or the reverse.
Every door refuses them with one line that names the file (and the tensors), never with a login hint:
`naturelm.loading.load`, `naturelm infer --model` (exit 3), the Space's loader and, for the tensors, `AutoModel` remote
code."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from naturelm.loading import ModelFilesError, load

MODEL, ADAPTER = "model.safetensors", "adapter_model.safetensors"


def _drop(folder: Path, file: str, part: str) -> str:
    """Deletes the first tensor of `file` whose name contains `part`; returns its name."""
    weights = load_file(folder / file)
    name = next(key for key in sorted(weights) if part in key)
    del weights[name]
    save_file(weights, folder / file, metadata={"format": "pt"})
    return name


def _deleted(part: str) -> Callable[[Path], tuple[str, list[str]]]:
    def damage(folder: Path) -> tuple[str, list[str]]:
        return MODEL, [_drop(folder, MODEL, part), "missing"]
    return damage


def _lora_b_deleted(folder: Path) -> tuple[str, list[str]]:
    name = _drop(folder, ADAPTER, "lora_B")  # peft's file name: base_model.model.<module>.lora_B.weight
    module = name.removeprefix("base_model.model.").removesuffix(".lora_B.weight")
    return ADAPTER, [f"{module}.lora_B", "missing"]


def _one_layer_more(folder: Path) -> tuple[str, list[str]]:
    config = json.loads((folder / "config.json").read_text())
    layers = config["text_config"]["num_hidden_layers"]
    config["text_config"]["num_hidden_layers"] = layers + 1
    (folder / "config.json").write_text(json.dumps(config))
    return MODEL, [f"model.language_model.layers.{layers}.", "missing"]


def _mis_shaped(folder: Path) -> tuple[str, list[str]]:
    weights = load_file(folder / MODEL)
    name = next(key for key in sorted(weights) if "audio_projector" in key and weights[key].ndim == 2)
    weights[name] = weights[name][:, :-1].contiguous()
    save_file(weights, folder / MODEL, metadata={"format": "pt"})
    return MODEL, [name, "mis-shaped", str(tuple(weights[name].shape))]


def _truncated(folder: Path) -> tuple[str, list[str]]:
    data = (folder / MODEL).read_bytes()
    (folder / MODEL).write_bytes(data[: len(data) // 2])
    return MODEL, ["truncated"]


def _pickled_bin_only(folder: Path) -> tuple[str, list[str]]:
    """The weights only as a pytorch_model.bin that a training loop saved with `torch.save`: the state dict beside
    the run's arguments, a pickled Python object."""
    weights = load_file(folder / MODEL)
    torch.save({**weights, "args": argparse.Namespace(learning_rate=1e-4)}, folder / "pytorch_model.bin")
    (folder / MODEL).unlink()
    return "pytorch_model.bin", ["Python objects", "save_pretrained"]


def _truncated_bin_only(folder: Path) -> tuple[str, list[str]]:
    torch.save(load_file(folder / MODEL), folder / "pytorch_model.bin")
    (folder / MODEL).unlink()
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    return "pytorch_model.bin", ["truncated"]


def _adapter_file_missing(folder: Path) -> tuple[str, list[str]]:
    (folder / ADAPTER).unlink()
    return "adapter_config.json", [ADAPTER, "missing"]


def _adapter_config_missing(folder: Path) -> tuple[str, list[str]]:
    """transformers finds an adapter by its config: without it the adapter would be left out, silently."""
    (folder / "adapter_config.json").unlink()
    return ADAPTER, ["adapter_config.json", "left out"]


BREAKS = {
    "llama_tensor_deleted": _deleted("language_model.layers."),
    "qformer_tensor_deleted": _deleted(".qformer."),
    "beats_tensor_deleted": _deleted("audio_tower."),
    "lora_b_deleted": _lora_b_deleted,
    "config_claims_one_layer_more": _one_layer_more,
    "mis_shaped_weight": _mis_shaped,
    "truncated_safetensors": _truncated,
    "only_a_pickled_pytorch_model_bin": _pickled_bin_only,
    "only_a_truncated_pytorch_model_bin": _truncated_bin_only,
    "adapter_file_missing": _adapter_file_missing,
    "adapter_config_missing": _adapter_config_missing,
}
# What a model class can see: the tensors transformers' loading report lists.
TENSOR_BREAKS = ["llama_tensor_deleted", "qformer_tensor_deleted", "beats_tensor_deleted", "lora_b_deleted",
                 "config_claims_one_layer_more", "mis_shaped_weight"]


def _broken(tiny_model_dir: Path, tmp_path: Path, name: str) -> tuple[Path, list[str]]:
    """A copy of the converted tiny model broken as `name` says; and what its error must name (the file first)."""
    folder = tmp_path / name
    shutil.copytree(tiny_model_dir, folder)
    file, expected = BREAKS[name](folder)
    return folder, [str(folder / file), *expected]


def _assert_names(message: str, expected: list[str]) -> None:
    assert "\n" not in message.strip(), message
    for text in expected:
        assert text in message, (text, message)
    assert "login" not in message and "gated" not in message, message


@pytest.mark.parametrize("name", BREAKS)
def test_the_loader_refuses(name, tiny_model_dir, tmp_path):
    folder, expected = _broken(tiny_model_dir, tmp_path, name)
    with pytest.raises(ModelFilesError) as error:
        load(str(folder), dtype=torch.float32)
    _assert_names(str(error.value), expected)


def _assert_one_line_exit_3(code: int, stderr: str, expected, output) -> None:
    assert code == 3, stderr[-3000:]
    assert "Traceback" not in stderr and "LOAD REPORT" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("naturelm:")]
    assert len(errors) == 1, stderr[-3000:]
    _assert_names(errors[0], expected)
    assert not output.exists() or output.read_text() == ""


@pytest.mark.parametrize("name", BREAKS)
def test_cli_infer_exits_3_with_one_line(name, tiny_model_dir, tmp_path, audio_recordings, capfd, monkeypatch):
    """`naturelm infer` in this process (its `main`, with the process's stderr captured at the file descriptor, where
    transformers' log handlers write); one case also as its own process below."""
    from naturelm.cli import main

    folder, expected = _broken(tiny_model_dir, tmp_path, name)
    clip = min(audio_recordings, key=lambda recording: recording.path.stat().st_size).path
    output = tmp_path / "out.jsonl"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["infer", str(clip), "--model", str(folder), "--dtype", "fp32", "--output", str(output),
                 "--no-progress"])
    _assert_one_line_exit_3(code, capfd.readouterr().err, expected, output)


def test_cli_infer_exits_3_with_one_line_as_a_process(tiny_model_dir, tmp_path, audio_recordings):
    folder, expected = _broken(tiny_model_dir, tmp_path, next(iter(BREAKS)))
    clip = min(audio_recordings, key=lambda recording: recording.path.stat().st_size).path
    output = tmp_path / "out.jsonl"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "naturelm.cli", "infer", str(clip), "--model", str(folder), "--dtype", "fp32",
         "--output", str(output), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    _assert_one_line_exit_3(result.returncode, result.stderr, expected, output)


def test_space_loader_refuses_without_a_login_hint(tiny_model_dir, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "space"))
    import engine
    import gradio as gr

    folder, expected = _broken(tiny_model_dir, tmp_path, "lora_b_deleted")
    holder = engine.ModelHolder(engine.Settings(model=str(folder), dtype="fp32"))
    with pytest.raises(gr.Error) as error:
        holder.get()
    _assert_names(error.value.message, expected)
    assert "HF_TOKEN" not in error.value.message and not holder.loaded


def test_load_adapter_on_its_own_refuses_a_missing_lora_tensor(tiny_model_dir, tmp_path):
    from modeling_naturelm import NatureLMCheckpointError, NatureLMForConditionalGeneration

    folder, expected = _broken(tiny_model_dir, tmp_path, "lora_b_deleted")
    model = NatureLMForConditionalGeneration.from_pretrained(tiny_model_dir)
    with pytest.raises(NatureLMCheckpointError) as error:
        model.load_adapter(str(folder), adapter_name="second")
    _assert_names(str(error.value), expected)


# Runs where `naturelm` cannot be imported: the folder's own modeling_naturelm.py decides, as for any user of the
# Hub. Prints, per folder, the class of the error raised (None when it loaded) and its message.
AUTO_LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "naturelm" or name.startswith("naturelm."):
                raise ImportError("naturelm is blocked here")

    sys.meta_path.insert(0, _Block())
    from transformers import AutoModel

    results = {}
    for folder in sys.argv[1:]:
        try:
            AutoModel.from_pretrained(folder, trust_remote_code=True)
            results[folder] = [None, ""]
        except Exception as error:
            results[folder] = [type(error).__name__, str(error)]
    print(json.dumps(results))
    """
)


def test_automodel_remote_code_refuses_what_the_loading_report_lists(tiny_model_dir, tmp_path):
    broken = {name: _broken(tiny_model_dir, tmp_path, name) for name in TENSOR_BREAKS}
    folders = [str(tiny_model_dir)] + [str(folder) for folder, _ in broken.values()]
    (tmp_path / "loader.py").write_text(AUTO_LOADER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run([sys.executable, str(tmp_path / "loader.py"), *folders], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert results[str(tiny_model_dir)] == [None, ""]  # the intact folder loads
    for name, (folder, expected) in broken.items():
        error_class, message = results[str(folder)]
        assert error_class == "NatureLMCheckpointError", (name, error_class, message)
        _assert_names(message, expected)
