"""The one audio path and the one engine: every door reads the same samples, windows are batched across recordings in
a background reader, results come back in order, bad recordings are failed rows, each clip is encoded once."""

import threading

import numpy as np
import pytest
import soundfile
import torch

from audio_naturelm import AudioError, array_windows, read_audio, stream_windows, to_mono, window_starts
from naturelm.testing_utils import tiny_model_and_processor
from naturelm.engine import (
    DEFAULT_QUERY,
    Recording,
    build_prompt,
    embedding_task,
    generation_task,
    label_task,
    run_recordings,
)
from pipeline_naturelm import TASK, NatureLMPipeline


@pytest.fixture(scope="module")
def tiny(tokenizer_dir):
    return tiny_model_and_processor(tokenizer_dir)


@pytest.fixture(scope="module")
def resampled_file(audio_recordings):
    """The shortest shared recording that is not at 16 kHz and has several channels if one has (the rate and the
    channel layout come from the fixture)."""
    candidates = [r for r in audio_recordings if r.sampling_rate != 16000]
    assert candidates, "the audio fixture needs a recording at another rate than 16 kHz"
    return min(candidates, key=lambda r: (-r.channels, r.header_seconds)).path


def test_window_starts_keep_the_tail():
    assert window_starts(25, 10, 10) == [0, 10, 20]
    assert window_starts(20, 10, 10) == [0, 10]
    assert window_starts(5, 10, 10) == [0]
    assert window_starts(23, 10, 5) == [0, 5, 10, 15]
    assert window_starts(23, 4, 10) == [0, 10, 20]  # hop longer than the window: gaps, nothing past the end


@pytest.mark.parametrize("window, hop", [(10.0, 10.0), (10.0, 3.0), (2.5, 4.0)])
def test_streamed_windows_equal_the_windows_of_the_whole_file(audio_recordings, monkeypatch, window, hop):
    import audio_naturelm

    monkeypatch.setattr(audio_naturelm, "BLOCK_SECONDS", 3.7)  # many blocks per file, windows across block edges
    for path in (recording.path for recording in audio_recordings):
        whole = read_audio(path)
        streamed, expected = list(stream_windows(path, window, hop)), list(array_windows(whole, window, hop))
        assert [w[:2] for w in streamed] == [w[:2] for w in expected]
        assert all(np.array_equal(a[2], b[2]) for a, b in zip(streamed, expected))


def test_every_door_reads_the_same_samples(resampled_file, tiny):
    """A file, its raw samples with their rate, the processor, training's reader: the same 16 kHz samples."""
    from naturelm.training.audio import decode_audio

    _, processor = tiny
    raw, rate = soundfile.read(resampled_file, dtype="float32", always_2d=True)
    samples = read_audio(resampled_file)
    assert np.array_equal(to_mono(raw, rate), samples)  # (frames, channels): the shorter axis is the channels
    assert np.array_equal(to_mono(raw.T, rate), samples)
    assert np.array_equal(decode_audio(str(resampled_file)), samples)
    assert np.array_equal(decode_audio({"bytes": resampled_file.read_bytes(), "path": None}), samples)
    assert np.array_equal(decode_audio({"array": raw, "sampling_rate": rate}), samples)
    first = next(stream_windows(resampled_file, 10.0, 10.0))[2]
    from_raw = processor.feature_extractor(raw.T, sampling_rate=rate, return_tensors="pt").input_features
    from_file = processor.feature_extractor(first, sampling_rate=16000, return_tensors="pt").input_features
    assert torch.equal(from_raw, from_file)


def test_pipeline_gives_the_same_rows_for_a_path_and_its_samples(resampled_file, tiny):
    model, processor = tiny
    pipe = NatureLMPipeline(model=model, processor=processor, task=TASK, device=model.device)
    raw, rate = soundfile.read(resampled_file, dtype="float32")
    kwargs = dict(max_new_tokens=3, num_beams=1, window_seconds=4.0)
    by_path = pipe(str(resampled_file), **kwargs)["windows"]
    assert by_path == pipe(raw, sampling_rate=rate, **kwargs)["windows"]
    assert by_path == pipe({"array": raw, "sampling_rate": rate}, **kwargs)["windows"]


def _recordings(audio_recordings, tmp_path, prompt):
    """The shared recordings with bad files among them: an empty file, text named .wav, a file cut mid-stream."""
    files = [recording.path for recording in audio_recordings]
    assert len(files) >= 2, "the audio fixture needs two recordings, to put bad files between them"
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("not audio")
    longest = max(files, key=lambda p: soundfile.info(p).frames)
    samples, rate = soundfile.read(longest, dtype="float32")
    soundfile.write(tmp_path / "cut.wav", samples, rate)
    data = (tmp_path / "cut.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])  # the header promises more than there is
    bad = [tmp_path / "empty.wav", tmp_path / "text.wav"]
    paths = [files[0], bad[0], *files[1:-1], bad[1], tmp_path / "cut.wav", files[-1]]
    return paths, [Recording.from_file(p, 4.0, 3.0, prompt) for p in paths]


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_results_come_in_order_with_failed_rows_whatever_the_batch(audio_recordings, tmp_path, tiny, batch_size):
    model, processor = tiny
    prompt = build_prompt(processor, DEFAULT_QUERY)
    paths, recordings = _recordings(audio_recordings, tmp_path, prompt)
    task = generation_task(max_new_tokens=2, num_beams=1)
    results = list(run_recordings(model, processor, recordings, task, batch_size=batch_size, read_ahead=1))
    assert [r.key for r in results] == [str(p) for p in paths] and [r.index for r in results] == list(range(len(paths)))
    for path, result in zip(paths, results):
        if path.name in ("empty.wav", "text.wav"):
            assert result.error and not result.rows
        else:
            expected = list(array_windows(read_audio(path), 4.0, 3.0)) if path.name != "cut.wav" else None
            if expected is not None:
                assert result.error is None
                assert [(r["start"], r["end"]) for r in result.rows] == [
                    (round(s, 6), round(e, 6)) for s, e, _ in expected]
    again = _recordings(audio_recordings, tmp_path, prompt)[1]
    reference = list(run_recordings(model, processor, again, task, batch_size=1))
    assert [(r.rows, r.error) for r in results] == [(r.rows, r.error) for r in reference]


def test_reading_runs_ahead_in_a_background_thread_with_bounded_memory(tiny):
    model, processor = tiny
    threads, produced, consumed = set(), [0], []

    def windows():
        for i in range(40):
            threads.add(threading.current_thread().name)
            produced[0] += 1
            yield i * 1.0, i + 1.0, np.zeros(16000, np.float32)

    def task(model, processor, batch):
        consumed.append((produced[0], len(batch)))
        return [{"n": len(batch)} for _ in batch]

    (result,) = run_recordings(model, processor, [Recording("synthetic", windows)], task, batch_size=4, read_ahead=2)
    assert len(result.rows) == 40 and threading.current_thread().name not in threads
    # while a batch runs, the reader holds at most `read_ahead` batches more (plus the one it is putting)
    assert all(ahead - done <= 4 * 2 + 4 + 1 for (ahead, _), done in zip(consumed, range(0, 40, 4)))


def test_a_recording_that_raises_anything_is_a_failed_row_and_the_rest_run(tiny):
    model, processor = tiny

    def broken():
        yield 0.0, 1.0, np.zeros(16000, np.float32)
        raise RuntimeError("the disk went away")

    recordings = [Recording("broken", broken), Recording.from_array("ok", np.zeros(32000, np.float32), 1.0)]
    results = list(run_recordings(model, processor, recordings, embedding_task(), batch_size=8))
    assert results[0].error == "cannot be read (RuntimeError: the disk went away)" and results[0].rows == []
    assert results[1].error is None and len(results[1].rows) == 2


def test_label_and_embedding_tasks_return_one_row_per_window(tiny):
    model, processor = tiny
    recording = Recording.from_array("x", np.random.default_rng(0).normal(0, 0.1, 48000).astype(np.float32), 1.0,
                                     prompt=build_prompt(processor, DEFAULT_QUERY))
    (labels,) = run_recordings(model, processor, [recording], label_task(["a", "b"]), batch_size=2)
    assert len(labels.rows) == 3 and all(sorted(r["labels"]) == ["a", "b"] for r in labels.rows)
    (embeddings,) = run_recordings(model, processor, [recording], embedding_task(), batch_size=2)
    assert all(r["llm_embedding"].shape == (model.config.text_config.hidden_size,) for r in embeddings.rows)
    with pytest.raises(ValueError, match="at least one label"):
        label_task([])


def test_bad_arrays_are_refused_with_their_reason():
    with pytest.raises(AudioError, match=r"sampling[ _]rate"):
        to_mono(np.zeros(10, np.float32), None)
    with pytest.raises(AudioError, match="NaN"):
        to_mono(np.full(10, np.nan, np.float32), 16000)
    with pytest.raises(AudioError, match="dtype"):
        to_mono(np.zeros(10, np.int16), 16000)


@pytest.mark.parametrize("generate_kwargs", [dict(num_beams=2), dict(num_beams=3, num_return_sequences=2)])
def test_each_clip_is_encoded_once_whatever_the_beams(tiny, generate_kwargs):
    model, processor = tiny
    seen = []
    hook = model.model.audio_tower.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    clips = [np.random.default_rng(i).normal(0, 0.1, 160000).astype(np.float32) for i in range(3)]
    prompts = [build_prompt(processor, DEFAULT_QUERY)] * 3
    try:
        inputs = processor(text=prompts, audio=clips, sampling_rate=16000)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, **generate_kwargs)
    finally:
        hook.remove()
    assert seen == [len(clips)]
    assert output.shape[0] == len(clips) * generate_kwargs.get("num_return_sequences", 1)


def test_beam_search_with_several_clips_in_one_prompt(tiny):
    """Clips are merged into the prompt before the beams are expanded, so a prompt may hold several."""
    model, processor = tiny
    clips = [np.random.default_rng(i).normal(0, 0.1, 160000).astype(np.float32) for i in range(2)]
    from processing_naturelm import AUDIO_SPAN

    prompt = build_prompt(processor, f"{AUDIO_SPAN} and {AUDIO_SPAN} Which is louder?")
    inputs = processor(text=prompt, audio=clips, sampling_rate=16000)
    with torch.no_grad():
        beams = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, num_beams=2)
        again = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, num_beams=2)
    assert beams.shape == (1, inputs["input_ids"].shape[1] + 3) and torch.equal(beams, again)
