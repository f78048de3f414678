"""The pipeline on the tiny parity model: batching changes nothing, labels are scored faithfully, and it keeps
transformers' Pipeline contract (arguments given when it is built or called are honoured, the call's win)."""

import numpy as np
import pytest
import soundfile
import torch
from transformers import pipeline

from naturelm import NatureLMPipeline
from naturelm.convert import convert, from_original
from audio_naturelm import stream_windows
from pipeline_naturelm import DEFAULT_QUERY, TASK, build_prompt
from naturelm.testing_utils import tiny_model_and_processor


@pytest.fixture(scope="module")
def parity_model(parity_dir):
    return from_original(
        parity_dir / "original_checkpoint_full", parity_dir / "base_llama", parity_dir / "qformer_config.json"
    )


@pytest.fixture(scope="module")
def long_recording(audio_dir) -> str:
    """The longest shared recording (several windows, a partial last one)."""
    return str(max(audio_dir.iterdir(), key=lambda p: soundfile.info(p).duration))


@pytest.mark.parametrize("num_beams", [1, 2])
def test_batched_pipeline_equals_per_window_generation(parity_model, long_recording, num_beams):
    model, processor = parity_model
    pipe = NatureLMPipeline(model=model, processor=processor, task=TASK, device=model.device)
    kwargs = dict(max_new_tokens=8, min_new_tokens=8, num_beams=num_beams, do_sample=False)
    result = pipe([long_recording, long_recording], query=["Caption the audio.", "What is it? Answer:"],
                  batch_size=8, **kwargs)
    audio, rate = soundfile.read(long_recording)
    duration = len(audio) / rate
    for output, query in zip(result, ["Caption the audio.", "What is it? Answer:"]):
        windows = output["windows"]
        assert len(windows) == -(-duration // 10) and abs(windows[-1]["end"] - duration) < 1e-3
        every = list(stream_windows(long_recording, 10.0))
        for window in windows:
            _, _, samples = every[round(window["start"] / 10)]
            single = processor(text=build_prompt(processor, query), audio=samples, sampling_rate=16000)
            ids = model.generate(**single, **kwargs)[0, single["input_ids"].shape[1]:]
            assert window["text"] == processor.decode(ids, skip_special_tokens=True).strip()


def test_candidate_label_scores_rank_like_one_label_at_a_time(tokenizer_dir, clips_16k):
    model, processor = tiny_model_and_processor(tokenizer_dir, seed=4)
    pipe = NatureLMPipeline(model=model, processor=processor, task=TASK, device=model.device)
    labels = ["American Robin", "Green Treefrog", "Gray Wolf", "None", "Lazuli Bunting"]
    result = pipe(clips_16k, sampling_rate=16000, candidate_labels=labels, batch_size=4)
    for output, clip in zip(result, clips_16k):
        window = output["windows"][0]
        assert sorted(window["labels"]) == sorted(labels)
        assert abs(sum(window["scores"]) - 1) < 1e-5
        prompt = build_prompt(processor, DEFAULT_QUERY)  # the pipeline's question when none is given
        reference = {}
        for label in labels:  # the plain model, one full sequence (label + <|end_of_text|>) per label
            batch = processor(text=prompt, audio=clip[:160000], sampling_rate=16000, answers=label)
            with torch.no_grad():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0, :-1]
            targets = batch["labels"][0, 1:]
            keep = targets != -100
            reference[label] = logits.log_softmax(-1)[keep].gather(-1, targets[keep, None]).sum().item()
        assert window["labels"] == sorted(labels, key=lambda label: -reference[label])
        expected = torch.tensor([reference[label] for label in window["labels"]]).softmax(0)
        assert torch.allclose(torch.tensor(window["scores"]), expected, atol=1e-4)


@pytest.fixture(scope="module")
def clips_16k(reference):
    return [clip.numpy() for clip in reference["waveform"]]


def test_inputs_in_every_form_give_the_same_answer(tokenizer_dir, long_recording):
    model, processor = tiny_model_and_processor(tokenizer_dir, seed=5)
    pipe = NatureLMPipeline(model=model, processor=processor, task=TASK, device=model.device)
    audio, rate = soundfile.read(long_recording, dtype="float32")
    kwargs = dict(max_new_tokens=3, min_new_tokens=3)
    from_array = pipe(audio, sampling_rate=rate, **kwargs)
    from_dict = pipe({"array": audio, "sampling_rate": rate}, **kwargs)
    from_tensor = pipe(torch.from_numpy(audio.T.copy()), sampling_rate=rate, **kwargs)
    assert from_array["windows"] == from_dict["windows"] == from_tensor["windows"]
    assert from_array["file"] is None and pipe(long_recording, **kwargs)["file"] == long_recording


def test_bad_inputs_are_clear_errors(tokenizer_dir):
    model, processor = tiny_model_and_processor(tokenizer_dir, seed=5)
    pipe = NatureLMPipeline(model=model, processor=processor, task=TASK, device=model.device)
    with pytest.raises(ValueError, match="sampling_rate"):
        pipe(np.zeros(16000, np.float32))
    with pytest.raises(ValueError, match="int16"):
        pipe(np.zeros(16000, np.int16), sampling_rate=16000)
    with pytest.raises(ValueError, match="NaN"):
        pipe(np.full(16000, np.nan, np.float32), sampling_rate=16000)
    with pytest.raises(ValueError, match="2 inputs but 1 queries"):
        pipe([np.zeros(16000, np.float32)] * 2, sampling_rate=16000, query=["a"])


def test_transformers_pipeline_factory_loads_the_remote_code(parity_dir, tmp_path, long_recording):
    convert(parity_dir / "original_checkpoint_full", tmp_path, parity_dir / "base_llama",
            parity_dir / "qformer_config.json", dtype="fp32")
    pipe = pipeline(TASK, model=str(tmp_path), trust_remote_code=True)
    assert type(pipe).__name__ == "NatureLMPipeline"
    # the model declares the pipeline by name (it cannot import it: the pipeline imports the model)
    from modeling_naturelm import PIPELINE_CLASS
    from pipeline_naturelm import NatureLMPipeline

    assert PIPELINE_CLASS == f"{NatureLMPipeline.__module__}.{NatureLMPipeline.__name__}"
    output = pipe(long_recording, max_new_tokens=2, min_new_tokens=2)
    assert output["file"] == long_recording and all(len(w["text"]) > 0 for w in output["windows"])


def test_arguments_given_at_construction_are_honoured_and_the_call_overrides_them(tokenizer_dir, long_recording):
    model, processor = tiny_model_and_processor(tokenizer_dir, seed=6)
    calls = []  # (batch size, new tokens) of every `generate` call
    generate = model.generate

    def counting_generate(**inputs):
        output = generate(**inputs)
        calls.append((output.shape[0], output.shape[1] - inputs["input_ids"].shape[1]))
        return output

    model.generate = counting_generate
    audio, rate = soundfile.read(long_recording, dtype="float32")
    audio = audio[: 7 * 2 * rate]  # 7 windows of 2 s
    pipe = pipeline(TASK, model=model, processor=processor, max_new_tokens=2, min_new_tokens=2, batch_size=3,
                    window_seconds=2.0)
    built = pipe(audio, sampling_rate=rate)
    assert len(built["windows"]) == 7 and calls == [(3, 2), (3, 2), (1, 2)]

    calls.clear()
    called = pipe(audio, sampling_rate=rate, max_new_tokens=3, min_new_tokens=3, batch_size=2, window_seconds=3.5)
    assert len(called["windows"]) == 4 and calls == [(2, 3), (2, 3)]
    calls.clear()
    pipe([audio, audio[: 3 * rate]], sampling_rate=rate)  # batches run across recordings: 7 + 2 windows
    assert calls == [(3, 2), (3, 2), (3, 2)]
