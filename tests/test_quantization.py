"""`--quantize`: which layers are quantized (bitsandbytes nf4/int8 through `quantization_config`, PyTorch's fbgemm int8),
how far the outputs move, and the doors that take the option."""

import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from audio_fixture import num_windows
from cli_runner import run_cli
from naturelm.loading import load
from naturelm.quantization import BITSANDBYTES, QUANTIZATIONS, Int8Linear, bitsandbytes_config, quantize_language_model
from naturelm.testing_utils import tiny_model_and_processor
from pipeline_naturelm import DEFAULT_QUERY, build_prompt


def _relative_error(approximation: torch.Tensor, exact: torch.Tensor) -> float:
    return float((approximation.float() - exact.float()).norm() / exact.float().norm())


def test_int8_linear_is_a_close_int8_copy_that_keeps_the_activation_dtype():
    torch.manual_seed(0)
    linear = nn.Linear(96, 40)
    quantized = Int8Linear(linear)
    hidden = torch.randn(7, 3, 96)
    with torch.no_grad():
        exact, approximation = linear(hidden), quantized(hidden)
    assert quantized.quantized.weight().dtype == torch.qint8
    assert approximation.shape == exact.shape
    assert 0 < _relative_error(approximation, exact) < 0.03
    assert quantized(hidden.bfloat16()).dtype == torch.bfloat16


def test_language_model_linears_become_int8_and_the_audio_side_stays():
    model, _ = tiny_model_and_processor()
    model.merge_adapter_into_weights()
    linears = [name for name, m in model.model.language_model.named_modules() if type(m) is nn.Linear]
    audio_linears = [name for name, m in model.named_modules() if type(m) is nn.Linear and "language_model" not in name
                     and name != "lm_head"]

    assert quantize_language_model(model) == len(linears) + 1
    assert isinstance(model.lm_head, Int8Linear)
    assert not any(type(m) is nn.Linear for m in model.model.language_model.modules())
    assert audio_linears == [name for name, m in model.named_modules() if type(m) is nn.Linear]
    # what is left of the language model as parameters: embeddings and norms, no projection
    assert all(p.dim() == 1 or "embed_tokens" in name for name, p in model.model.language_model.named_parameters())


def test_quantizing_refuses_an_unmerged_adapter_a_gpu_model_and_unknown_methods():
    model, _ = tiny_model_and_processor()
    with pytest.raises(ValueError, match="Merge the LoRA adapter"):
        quantize_language_model(model)
    model.merge_adapter_into_weights()
    with pytest.raises(ValueError, match="choose fbgemm-int8"):
        quantize_language_model(model, "nf4")  # the bitsandbytes formats are the loader's
    with pytest.raises(ValueError, match="CPU int8 kernels"):
        quantize_language_model(copy.deepcopy(model).to("meta"))


_QUANTIZE_AND_REPORT_RSS = """
import json, torch
from naturelm.quantization import quantize_language_model
from naturelm.testing_utils import tiny_model_and_processor

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

model, _ = tiny_model_and_processor(lora_rank=0, text_config=dict(hidden_size=1024, intermediate_size=4096,
                                    num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4))
model = model.to(torch.bfloat16)
before = rss_mb()
with torch.no_grad():
    quantize_language_model(model)
print(json.dumps({"before": before, "after": rss_mb()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_quantizing_does_not_grow_memory():
    # Converting weight by weight (bf16 -> fp32 temporaries -> int8) must hand each weight's memory back before the
    # next (under a tuned allocator it once left holes, and the 8B model grew past 24 GB). Here the 128k-row lm_head
    # alone makes ~1 GB of fp32 temporaries: if they are kept, resident memory ends above where it started.
    done = subprocess.run([sys.executable, "-c", _QUANTIZE_AND_REPORT_RSS], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rss = json.loads(done.stdout.splitlines()[-1])
    assert rss["after"] < rss["before"]


def test_int8_logits_stay_close_to_full_precision(tiny_model_dir, audio_recordings):
    """The parity model on real audio: the int8 model's logits, teacher-forced on the full-precision model's own
    answer, stay within a few percent of it (the benchmark reports the greedy agreement; here it is bounded)."""
    from audio_naturelm import read_audio

    exact, processor = load(str(tiny_model_dir), dtype=torch.float32)
    quantized, _ = load(str(tiny_model_dir), dtype=torch.float32, quantize="fbgemm-int8")
    prompt = build_prompt(processor, DEFAULT_QUERY)
    clips = [read_audio(r.path)[: 16000 * 10] for r in audio_recordings[:3]]
    inputs = processor(text=[prompt] * len(clips), audio=clips, sampling_rate=16000, return_tensors="pt",
                       padding=True)
    with torch.inference_mode():
        answer = exact.generate(**inputs, max_new_tokens=8, min_new_tokens=8, num_beams=1, do_sample=False)
        new_tokens = torch.ones_like(answer[:, inputs["input_ids"].shape[1]:])
        forced = {**inputs, "input_ids": answer, "attention_mask": torch.cat([inputs["attention_mask"], new_tokens], 1)}
        reference, approximation = exact(**forced).logits, quantized(**forced).logits
    assert 0 < _relative_error(approximation, reference) < 0.1


@pytest.mark.parametrize("method", QUANTIZATIONS)
def test_infer_takes_quantize(tiny_model_dir, audio_recordings, tmp_path, method):
    output = tmp_path / "rows.jsonl"
    done = run_cli(["infer", str(audio_recordings[0].path), "--model", str(tiny_model_dir), "--quantize", method,
                    "--num-beams", "1", "--max-new-tokens", "4", "--no-progress", "--output", str(output)])
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    expected = num_windows(audio_recordings[0].decoded_seconds, 10.0, 10.0)
    assert len(rows) == expected and all(isinstance(r["answer"], str) for r in rows)


def _bitsandbytes_layer(method: str) -> type:
    import bitsandbytes as bnb

    return bnb.nn.Linear4bit if method == "nf4" else bnb.nn.Linear8bitLt


@pytest.mark.parametrize("method", BITSANDBYTES)
def test_automodel_quantizes_the_language_model_linears_only(tiny_model_dir, audio_recordings, method):
    """A converted folder through `AutoModel` remote code with the user's own `BitsAndBytesConfig`: every Linear of
    the language model (the LoRA adapter's own A/B aside) is a bitsandbytes layer, nothing else is; the audio side and
    `lm_head` keep the requested dtype; the adapter stays loaded on the quantized base; the logits stay near bf16."""
    from audio_naturelm import read_audio
    from transformers import AutoModel

    config = bitsandbytes_config(method, torch.bfloat16)
    model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True, dtype=torch.bfloat16,
                                      quantization_config=config).eval()
    reference, processor = load(str(tiny_model_dir), dtype=torch.bfloat16)
    layer = _bitsandbytes_layer(method)
    quantized = {name for name, module in model.named_modules() if isinstance(module, layer)}
    language = {name for name, module in model.model.language_model.named_modules(prefix="model.language_model")
                if isinstance(module, nn.Linear) and ".lora_" not in name}
    assert quantized and quantized == language
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight.dtype == torch.bfloat16
    for side in (model.model.audio_tower, model.model.audio_projector):
        assert {p.dtype for p in side.parameters()} == {torch.bfloat16}
        assert not any(isinstance(module, layer) for module in side.modules())
    assert model._lora_layers() and model._hf_peft_config_loaded

    prompt = build_prompt(processor, DEFAULT_QUERY)
    clip = read_audio(audio_recordings[0].path)[: 16000 * 10]
    inputs = processor(text=[prompt], audio=[clip], sampling_rate=16000, return_tensors="pt")
    with torch.inference_mode():
        generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, num_beams=1, do_sample=False)
        logits, exact = model(**inputs).logits[0, -1], reference(**inputs).logits[0, -1]
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 4)
    # measured 0.10 (nf4) and 0.011 (int8) on the parity model
    assert 0 < _relative_error(logits, exact) < {"nf4": 0.3, "int8": 0.05}[method]


def test_fp16_keeps_the_audio_side_in_fp32(tiny_model_dir):
    """Loaded in fp16 (GPUs without bf16), BEATs and the projector are read in fp32, the language model in fp16."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_model_dir, trust_remote_code=True, dtype=torch.float16)
    assert {p.dtype for p in model.model.audio_tower.parameters()} == {torch.float32}
    assert {p.dtype for p in model.model.audio_projector.parameters()} == {torch.float32}
    assert {p.dtype for p in model.model.language_model.parameters()} == {torch.float16}


def test_quantizing_an_original_checkpoint_asks_for_a_conversion(parity_dir):
    with pytest.raises(ValueError, match="naturelm convert"):
        load(str(parity_dir / "original_checkpoint_full"), base_model=str(parity_dir / "base_llama"), quantize="nf4")
