"""The one loader: every door (CLI, Python API, Space, evaluation, Ray actors, benchmarks, training) goes through
`naturelm.loading.load`, and `load` places a model by one rule."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import naturelm.loading
from naturelm.loading import load

ROOT = Path(__file__).resolve().parents[1]


class Loaded(Exception):
    """Raised by the spy in place of loading: the door got as far as the loader, with these arguments."""

    def __init__(self, args: tuple, kwargs: dict):
        super().__init__(args, kwargs)
        self.call_args, self.kwargs = args, kwargs


def _import_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the benchmarks import each other by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def spy(monkeypatch):
    """Replaces `load` in its module (doors that import it when they run) and wherever a door bound it on import."""
    monkeypatch.syspath_prepend(str(ROOT / "space"))
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import engine  # noqa: F401  (the Space's model side binds `load` on import)
    import naturelm.training.model  # noqa: F401

    def fake(*args, **kwargs):
        raise Loaded(args, kwargs)

    original = naturelm.loading.load
    for module in list(sys.modules.values()):
        if getattr(module, "load", None) is original and module is not sys.modules[__name__]:
            monkeypatch.setattr(module, "load", fake)


def test_the_cli_loads_through_the_loader(spy, audio_dir, tmp_path):
    from naturelm.cli import main

    clip = str(next(iter(sorted(audio_dir.iterdir()))))
    with pytest.raises(Loaded) as infer:
        main(["infer", clip, "--smoke", "--dtype", "fp32", "--quantize", "fbgemm-int8", "--no-progress",
              "--output", str(tmp_path / "rows.jsonl")])
    assert infer.value.kwargs["smoke"] and infer.value.kwargs["quantize"] == "fbgemm-int8"
    assert infer.value.kwargs["dtype"] == torch.float32
    with pytest.raises(Loaded):
        main(["embed", clip, "--smoke", "--output", str(tmp_path / "vectors.npz")])


def test_evaluation_loads_through_the_loader(spy, mini_beans_zero_dir, tmp_path):
    from naturelm.cli import main

    with pytest.raises(Loaded) as loaded:
        main(["evaluate", "beans-zero", "--dataset", str(mini_beans_zero_dir), "--output-dir", str(tmp_path),
              "--smoke", "--device", "cpu"])
    assert loaded.value.kwargs["smoke"] and loaded.value.kwargs["device"] == "cpu"


def test_ray_actors_load_through_the_loader(spy):
    from naturelm.ray_infer import ModelActor, WindowSettings

    with pytest.raises(Loaded) as loaded:
        ModelActor({"model": "somewhere", "smoke": True}, "query", None, WindowSettings(), 1, {})
    assert loaded.value.kwargs == {"model": "somewhere", "smoke": True}


def test_the_space_loads_through_the_loader(spy):
    import engine

    with pytest.raises(Loaded) as loaded:
        engine.ModelHolder(engine.Settings(model="tiny", dtype="bf16", device="cpu")).get()
    assert loaded.value.kwargs["smoke"] and loaded.value.kwargs["device"] == "cpu"
    assert loaded.value.kwargs["merge_adapter"] is False  # the merging-α slider rescales the adapter per call


def test_the_benchmarks_load_through_the_loader(spy):
    bench = _import_path("bench_inference", ROOT / "bench" / "bench_inference.py")
    for size in ("tiny", "mid"):
        with pytest.raises(Loaded) as loaded:
            bench.build(size, torch.float32, "cpu")
        assert loaded.value.kwargs["dtype"] == torch.float32


def test_training_loads_through_the_loader(spy):
    from trl import ModelConfig

    from naturelm.training.arguments import NatureLMArguments
    from naturelm.training.model import load_model_for_training

    with pytest.raises(Loaded) as loaded:
        load_model_for_training(ModelConfig(model_name_or_path="somewhere", dtype="float32"), NatureLMArguments())
    assert loaded.value.kwargs["training"] is True


@pytest.mark.parametrize("native_bf16", [False, True])
def test_the_loader_places_a_model_by_one_rule(tiny_model_dir, monkeypatch, native_bf16):
    """A bf16 model on a CPU without native bf16 gets an fp32 audio encoder and projector, merged adapter or not;
    a model loaded for training keeps its dtypes and its adapter."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    expected = torch.bfloat16 if native_bf16 else torch.float32
    for merge in (True, False):
        model, _ = load(str(tiny_model_dir), dtype=torch.bfloat16, merge_adapter=merge)
        assert model.model.audio_tower.dtype == model.model.audio_projector.linear.weight.dtype == expected
        assert model.model.language_model.dtype == torch.bfloat16 and not model.training
        assert bool(model._lora_layers()) is not merge
    trained, _ = load(str(tiny_model_dir), dtype=torch.bfloat16, training=True)
    assert trained.model.audio_tower.dtype == torch.bfloat16 and trained._lora_layers()


def test_a_model_loaded_for_training_takes_only_qlora_quantization():
    with pytest.raises(ValueError, match="training takes nf4 or int8"):
        load(smoke=True, training=True, quantize="fbgemm-int8")


def _imports(path: Path, package: str) -> set[str]:
    """The in-house modules a file imports, anywhere in it (lazy imports count: they are dependencies too)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, `level - 1` packages up
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_the_house_has_no_import_cycle():
    """Neither the package nor the remote-code files import each other in a circle (loading and quantization once
    did, as did the model and its pipeline)."""
    files = {path: path.stem for path in ROOT.glob("*.py")}
    for path in (ROOT / "naturelm").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[path] = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    modules = set(files.values())
    graph = {}
    for path, name in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {m for m in _imports(path, package) if m in modules and m != name}
    finished, path_now = set(), []

    def visit(module: str) -> None:
        if module in path_now:
            cycle = path_now[path_now.index(module):] + [module]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if module in finished:
            return
        path_now.append(module)
        for dependency in sorted(graph[module]):
            visit(dependency)
        path_now.pop()
        finished.add(module)

    for module in sorted(graph):
        visit(module)
