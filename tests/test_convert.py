"""The converter maps every original tensor explicitly and names whatever does not fit."""

import json
import re
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from naturelm.cli import main
from naturelm.convert import ConversionError, from_original, load_original_state_dict


def _copy_with(parity_dir, tmp_path, edit) -> "Path":  # noqa: F821
    """A copy of the full-layout checkpoint with its state dict edited."""
    source = parity_dir / "original_checkpoint_full"
    target = tmp_path / "edited"
    target.mkdir()
    shutil.copy(source / "config.json", target / "config.json")
    state_dict = {k: v.clone() for k, v in load_original_state_dict(source).items()}
    edit(state_dict)
    save_file(state_dict, target / "model.safetensors")
    return target


def _convert(parity_dir, folder):
    return from_original(folder, parity_dir / "base_llama", parity_dir / "qformer_config.json")


def test_aliases_are_resolved_from_metadata(parity_dir):
    path = parity_dir / "original_checkpoint_full" / "model.safetensors"
    with safe_open(path, "pt") as handle:
        stored, aliases = set(handle.keys()), handle.metadata() or {}
    state_dict = load_original_state_dict(path)
    assert aliases and all(alias in state_dict and alias not in stored for alias in aliases)


def test_unknown_tensor_is_named(parity_dir, tmp_path):
    folder = _copy_with(parity_dir, tmp_path, lambda sd: sd.__setitem__("beats.mystery.weight", torch.zeros(2)))
    with pytest.raises(ConversionError, match=r"unexpected \['model\.audio_tower\.mystery\.weight'\]"):
        _convert(parity_dir, folder)


def test_missing_tensor_is_named(parity_dir, tmp_path):
    folder = _copy_with(parity_dir, tmp_path, lambda sd: sd.pop("ln_audio.weight"))
    with pytest.raises(ConversionError, match=r"missing \['model\.audio_projector\.layer_norm\.weight'\]"):
        _convert(parity_dir, folder)


def test_shape_mismatch_is_named(parity_dir, tmp_path):
    def shrink(sd):
        sd["audio_llama_proj.weight"] = sd["audio_llama_proj.weight"][:, :-1].clone()

    folder = _copy_with(parity_dir, tmp_path, shrink)
    with pytest.raises(ConversionError, match=r"Shape mismatch for model\.audio_projector\.linear\.weight"):
        _convert(parity_dir, folder)


def test_alias_that_differs_is_refused(parity_dir, tmp_path):
    # a BEATs layer's relative-position table that the checkpoint stores as an alias of the first layer's
    with safe_open(parity_dir / "original_checkpoint_full" / "model.safetensors", "pt") as handle:
        aliases = handle.metadata() or {}
    key = next((alias for alias in aliases if alias.startswith("beats.") and "relative_attention_bias" in alias), None)
    assert key is not None, "the fixture should store a BEATs relative-position table as an alias"

    def detach_alias(sd):
        sd[key] = sd[key] + 1

    folder = _copy_with(parity_dir, tmp_path, detach_alias)
    with pytest.raises(ConversionError, match=re.escape(key) + ".*alias"):
        _convert(parity_dir, folder)


def test_pt_checkpoint_loads_with_weights_only(parity_dir, tmp_path, reference):
    folder = tmp_path / "pt"
    folder.mkdir()
    shutil.copy(parity_dir / "original_checkpoint_full" / "config.json", folder / "config.json")
    torch.save({"model": load_original_state_dict(parity_dir / "original_checkpoint_full")}, folder / "model.pt")
    model, _ = _convert(parity_dir, folder)
    with torch.no_grad():
        embeds = model.get_audio_features(reference["fbank"]).pooler_output
    assert (embeds - reference["audio_embeds"]).abs().max() <= 1e-4


def test_hub_layout_needs_base_weights(parity_dir, tmp_path):
    base = tmp_path / "base_without_weights"
    shutil.copytree(parity_dir / "base_llama", base)
    (base / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match="needs the base LM weights"):
        from_original(parity_dir / "original_checkpoint_hub_layout", base, parity_dir / "qformer_config.json")


def test_hub_layout_keeps_the_extended_vocabulary(parity_dir):
    model, processor = from_original(
        parity_dir / "original_checkpoint_hub_layout", parity_dir / "base_llama", parity_dir / "qformer_config.json"
    )
    embed_rows = load_file(parity_dir / "original_checkpoint_hub_layout" / "model.safetensors")[
        "llama_embed_tokens.weight"
    ].shape[0]
    assert model.get_input_embeddings().weight.shape[0] == embed_rows == model.lm_head.weight.shape[0]
    assert len(processor.tokenizer) == embed_rows
    assert set(model.generation_config.eos_token_id) >= {
        processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
    }


def test_cli_convert_writes_a_loadable_folder(parity_dir, tmp_path):
    out = tmp_path / "converted"
    code = main([
        "convert", str(parity_dir / "original_checkpoint_hub_layout"), str(out),
        "--base-model", str(parity_dir / "base_llama"), "--qformer-config", str(parity_dir / "qformer_config.json"),
        "--dtype", "bf16",
    ])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "naturelm" and config["dtype"] == "bfloat16"
    assert (out / "adapter_model.safetensors").exists() and (out / "processor_config.json").exists()


def test_cli_convert_reports_errors_without_traceback(parity_dir, tmp_path, capsys):
    code = main(["convert", str(tmp_path), str(tmp_path / "out"), "--base-model", str(parity_dir / "base_llama")])
    assert code == 2
    assert "has no config.json" in capsys.readouterr().err


def test_tensor_outside_every_known_prefix_is_named(parity_dir, tmp_path):
    folder = _copy_with(parity_dir, tmp_path, lambda sd: sd.__setitem__("mystery_head.bias", torch.zeros(2)))
    with pytest.raises(ConversionError, match=r"Unmapped tensor in the original checkpoint: mystery_head\.bias"):
        _convert(parity_dir, folder)


def test_checkpoints_decode_like_the_original_whatever_the_base_samples(parity_dir, reference, tmp_path, capsys):
    """Meta's Llama-3.1-8B-Instruct samples (do_sample, temperature 0.6, top_p 0.9); a converted NatureLM must decode
    as the original does, and every door must take its defaults from the checkpoint's generation config."""
    import soundfile as sf
    from transformers import GenerationConfig, pipeline

    import naturelm.auto  # noqa: F401  (registers the pipeline task)
    from naturelm.convert import ORIGINAL_DECODING
    from naturelm.evaluation.generation import generate_answers as evaluation_answers
    from naturelm.loading import load
    from pipeline_naturelm import DEFAULT_QUERY, TASK, build_prompt

    base = tmp_path / "sampling_base"
    shutil.copytree(parity_dir / "base_llama", base)
    sampling = GenerationConfig.from_pretrained(base)
    sampling.update(do_sample=True, temperature=0.6, top_p=0.9)
    sampling.save_pretrained(base)
    assert GenerationConfig.from_pretrained(base).do_sample
    converted = tmp_path / "converted"
    assert main(["convert", str(parity_dir / "original_checkpoint_full"), str(converted), "--base-model", str(base),
                 "--qformer-config", str(parity_dir / "qformer_config.json"), "--dtype", "fp32"]) == 0

    saved = GenerationConfig.from_pretrained(converted)
    for name, value in ORIGINAL_DECODING.items():
        assert getattr(saved, name) == value, name
    assert sampling.eos_token_id and set(GenerationConfig.from_pretrained(base).eos_token_id) <= set(saved.eos_token_id)

    model, processor = load(str(converted), dtype=torch.float32)
    clip = reference["waveform"][0].numpy()
    explicit = {key: value for key, value in ORIGINAL_DECODING.items() if value is not None}
    inputs = processor(text=build_prompt(processor, DEFAULT_QUERY), audio=clip, sampling_rate=16000)
    with torch.no_grad():
        by_default = model.generate(**inputs)
        assert torch.equal(by_default, model.generate(**inputs, **explicit))
    expected = processor.batch_decode(by_default[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]

    pipe = pipeline(TASK, model=model, processor=processor)
    assert pipe(clip, sampling_rate=16000)["windows"][0]["text"] == expected.strip()
    prompt = build_prompt(processor, DEFAULT_QUERY)
    assert evaluation_answers(model, processor, [prompt], [clip], 16000) == [expected]

    recording = tmp_path / "clip.wav"
    sf.write(recording, clip, 16000, subtype="FLOAT")
    output = tmp_path / "rows.jsonl"
    assert main(["infer", str(recording), "--model", str(converted), "--dtype", "fp32", "--output", str(output),
                 "--no-progress"]) == 0
    assert json.loads(output.read_text())["answer"] == expected.strip()
