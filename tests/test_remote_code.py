"""A converted folder loads through the Auto classes with trust_remote_code, offline, where `naturelm` cannot be
imported, and gives the same outputs as the in-package model."""

import ast
import json
import os
import subprocess
import sys
import textwrap

import torch

from naturelm.convert import convert, from_original

# Runs in a fresh interpreter: `naturelm` is made unimportable first (the dev venv has it installed), then
# everything comes from the saved folder's own code files.
LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "naturelm" or name.startswith("naturelm."):
                raise ImportError("naturelm is blocked in this test")

    sys.meta_path.insert(0, _Block())
    try:
        import naturelm  # noqa: F401
        raise SystemExit("naturelm should not be importable here")
    except ImportError:
        pass

    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoProcessor

    folder, inputs_file, out_file = sys.argv[1:4]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    feature_extractor = AutoFeatureExtractor.from_pretrained(folder, trust_remote_code=True)
    inputs = json.load(open(inputs_file))
    waveform = load_file(inputs["waveform_file"])["waveform"]
    batch = processor(text=inputs["prompt"], audio=waveform, sampling_rate=16000)
    with torch.no_grad():
        logits = model(**batch).logits
    generated = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    json.dump({
        "config_class": type(config).__name__,
        "model_class": type(model).__name__,
        "model_module": type(model).__module__,
        "processor_class": type(processor).__name__,
        "feature_extractor_class": type(feature_extractor).__name__,
        "adapter_loaded": bool(getattr(model, "_hf_peft_config_loaded", False)),
        "merging_alpha": model.config.merging_alpha,
        "last_logits": logits[0, -1].tolist(),
        "generated": generated[0, batch["input_ids"].shape[1]:].tolist(),
    }, open(out_file, "w"))
    """
)


def test_remote_code_round_trip_offline_without_package(parity_dir, reference, reference_io, tmp_path):
    folder = tmp_path / "converted"
    alpha = 0.5  # a non-default merging alpha must survive the round trip too
    convert(
        parity_dir / "original_checkpoint_full", folder, parity_dir / "base_llama", parity_dir / "qformer_config.json",
        merging_alpha=alpha, dtype="fp32",
    )
    code_files = {"audio_naturelm.py", "configuration_naturelm.py", "modeling_naturelm.py", "feature_extraction_naturelm.py",
                  "processing_naturelm.py", "pipeline_naturelm.py"}
    assert code_files <= set(os.listdir(folder))
    # each other too: the fallback of the sibling imports (`except ImportError: from modeling_naturelm import ...`)
    allowed = {"torch", "transformers", "numpy"} | set(sys.stdlib_module_names) | {n[: -len(".py")] for n in code_files}
    allowed |= {"soundfile", "soxr"}  # audio decoding and resampling, imported inside the functions that use them
    for name in code_files:
        for node in ast.walk(ast.parse((folder / name).read_text())):
            if isinstance(node, ast.Import):
                assert {alias.name.split(".")[0] for alias in node.names} <= allowed, (name, ast.dump(node))
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] in allowed, (name, node.module)

    model, processor = from_original(
        parity_dir / "original_checkpoint_full", parity_dir / "base_llama", parity_dir / "qformer_config.json",
        merging_alpha=alpha,
    )
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": reference_io["queries"][0]}]}],
        add_generation_prompt=True, tokenize=False,
    )
    batch = processor(text=prompt, audio=reference["waveform"][0], sampling_rate=16000)
    with torch.no_grad():
        expected_logits = model(**batch).logits[0, -1]
    expected_ids = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)[0, -4:].tolist()

    from safetensors.torch import save_file

    save_file({"waveform": reference["waveform"][0].contiguous()}, tmp_path / "waveform.safetensors")
    (tmp_path / "inputs.json").write_text(
        json.dumps({"prompt": prompt, "waveform_file": str(tmp_path / "waveform.safetensors")})
    )
    (tmp_path / "loader.py").write_text(LOADER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run(
        [sys.executable, str(tmp_path / "loader.py"), str(folder), str(tmp_path / "inputs.json"),
         str(tmp_path / "out.json")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["config_class"] == "NatureLMConfig"
    assert out["model_class"] == "NatureLMForConditionalGeneration"
    assert out["model_module"].startswith("transformers_modules")
    assert out["processor_class"] == "NatureLMProcessor"
    assert out["feature_extractor_class"] == "NatureLMFeatureExtractor"
    assert out["adapter_loaded"] and out["merging_alpha"] == alpha
    assert (torch.tensor(out["last_logits"]) - expected_logits).abs().max() <= 1e-4
    assert out["generated"] == expected_ids
