"""Text-audio data: loaders onto one schema, the weighted mixture, the per-example transform and the collator."""

import io
from collections import Counter

import numpy as np
import pytest
import soundfile
from datasets import Dataset, Features, Value
from training_helpers import DETECTION, INSTRUCTION, read_csv, species_rows, write_metadata

from naturelm.training import SCHEMA, SKIP_REASONS, NatureLMDataCollator, TextAudioTransform, decode_audio
from naturelm.training.arguments import AudioDatasetConfig
from naturelm.training.augment import NONE_ANSWER
from naturelm.training.data import apply_transform, load_text_audio_dataset, mix_datasets
from processing_naturelm import AUDIO_SPAN as AUDIO_PROMPT


def _rows(dataset) -> list[dict]:
    return [dict(row) for row in dataset]


def test_local_folder_with_relative_paths_csv_or_jsonl(species_clips, tmp_path):
    for name in ("metadata.csv", "metadata.jsonl"):
        folder = tmp_path / name.replace(".", "_")
        (folder / "clips").mkdir(parents=True)
        rows = []
        for clip in species_clips:
            link = folder / "clips" / clip["path"].rsplit("/", 1)[1]
            link.symlink_to(clip["path"])
            rows.append({"file_name": f"clips/{link.name}", "instruction": INSTRUCTION, "output": clip["label"]})
        write_metadata(folder, rows, name=name)
        dataset = load_text_audio_dataset(AudioDatasetConfig(path=str(folder), task="cls"))
        assert dataset.features == SCHEMA and len(dataset) == len(species_clips)
        for row, clip in zip(dataset, species_clips):
            assert row["audio"] == {"bytes": None, "path": str(folder / "clips" / clip["path"].rsplit("/", 1)[1])}
            assert (row["output"], row["task"], row["source"]) == (clip["label"], "cls", str(folder))


def test_parquet_with_embedded_audio_raw_arrays_and_renamed_columns(species_clips, tmp_path):
    waveform, rate = soundfile.read(species_clips[1]["path"], dtype="float32")
    encoded = io.BytesIO()
    soundfile.write(encoded, waveform, rate, format="WAV", subtype="FLOAT")
    features = Features({"clip": {"bytes": Value("binary"), "path": Value("string")}, "question": Value("string"),
                         "answer": Value("string")})
    Dataset.from_dict({"clip": [{"bytes": encoded.getvalue(), "path": "frog.wav"}], "question": ["Species?"],
                       "answer": [species_clips[1]["label"]]}, features=features).to_parquet(tmp_path / "a.parquet")
    dataset = load_text_audio_dataset(AudioDatasetConfig(
        path="parquet", data_files=str(tmp_path / "a.parquet"), task="cls",
        column_mapping={"clip": "audio", "question": "instruction", "answer": "output"},
    ))
    row = dataset[0]
    assert row["audio"]["bytes"] == encoded.getvalue() and row["instruction"] == "Species?"
    assert np.allclose(decode_audio(row["audio"]), decode_audio(species_clips[1]["path"]), atol=1e-6)

    # Raw sample arrays (as some hub datasets store audio) are kept losslessly as FLAC bytes.
    array = np.round(decode_audio(species_clips[1]["path"])[:16000] * 2**15) / 2**15
    Dataset.from_dict({"audio": [array.tolist()], "instruction": ["Species?"], "output": ["frog"]}).to_parquet(
        tmp_path / "b.parquet")
    raw = load_text_audio_dataset(AudioDatasetConfig(path="parquet", data_files=str(tmp_path / "b.parquet"),
                                                     sampling_rate=16000))[0]
    assert np.array_equal(decode_audio(raw["audio"]), array.astype(np.float32))
    Dataset.from_dict({"audio": [array.tolist()], "sampling_rate": [8000], "instruction": ["Species?"],
                       "output": ["frog"]}).to_parquet(tmp_path / "c.parquet")  # a rate per row
    per_row = load_text_audio_dataset(AudioDatasetConfig(path="parquet", data_files=str(tmp_path / "c.parquet")))[0]
    assert soundfile.info(io.BytesIO(per_row["audio"]["bytes"])).samplerate == 8000
    assert decode_audio(per_row["audio"]).size == 2 * array.size  # resampled to 16 kHz on reading


def test_streaming_yields_the_map_style_rows(species_dataset):
    config = AudioDatasetConfig(path=str(species_dataset))
    assert _rows(load_text_audio_dataset(config, streaming=True)) == _rows(load_text_audio_dataset(config))


def test_a_missing_required_column_or_mapping_is_a_configuration_error(species_clips, tmp_path):
    folder = write_metadata(tmp_path / "d", [{"file_name": c["path"], "question": "?", "answer": c["label"]}
                                             for c in species_clips])
    with pytest.raises(ValueError, match=r"no column \['instruction', 'output'\]"):
        load_text_audio_dataset(AudioDatasetConfig(path=str(folder)))
    with pytest.raises(ValueError, match=r"names columns \['label'\]"):
        load_text_audio_dataset(AudioDatasetConfig(path=str(folder), column_mapping={"label": "output"}))
    mapped = AudioDatasetConfig(path=str(folder), column_mapping={"question": "instruction", "answer": "output"})
    assert [row["output"] for row in load_text_audio_dataset(mapped)] == [c["label"] for c in species_clips]


def test_task_pattern_keeps_only_matching_rows(mixed_task_dataset):
    tasks = [row["task"] for row in read_csv(mixed_task_dataset / "metadata.csv")]
    dataset = load_text_audio_dataset(AudioDatasetConfig(path=str(mixed_task_dataset), task_pattern="detection$"))
    assert [row["task"] for row in dataset] == [task for task in tasks if task.endswith("detection")]


def test_weighted_mixture_draws_sources_in_proportion_to_their_weights():
    def source(name: str, size: int) -> Dataset:
        return Dataset.from_dict({"audio": [None] * size, "instruction": ["q"] * size, "output": ["a"] * size,
                                  "task": ["t"] * size, "source": [name] * size}, features=SCHEMA)

    mixture = mix_datasets([source("big", 3000), source("small", 300)], [3.0, 1.0], seed=0,
                           stopping_strategy="first_exhausted")
    counts = Counter(mixture["source"])
    assert counts["big"] / (counts["big"] + counts["small"]) == pytest.approx(0.75, abs=0.03)
    everything = mix_datasets([source("big", 300), source("small", 30)], [1.0, 1.0], seed=0,
                              stopping_strategy="all_exhausted")
    assert Counter(everything["source"])["big"] >= 300  # every row of every source is seen


def _transform(**kwargs) -> TextAudioTransform:
    return TextAudioTransform(seed=11, **kwargs)


def test_transform_decodes_crops_and_adds_the_audio_prompt(species_clips):
    long_clip = max(species_clips, key=lambda c: soundfile.info(c["path"]).duration)
    row = {"audio": {"bytes": None, "path": long_clip["path"]}, "instruction": INSTRUCTION,
           "output": long_clip["label"], "task": "cls", "source": "s"}
    full = decode_audio(long_clip["path"])
    train, evaluate = _transform(), _transform(training=False)
    example = train.prepare(row, train._rng(row))
    assert example["audio"].size == 160000 and example["instruction"] == f"{AUDIO_PROMPT} {INSTRUCTION}"
    offsets = set()
    for epoch in range(4):  # training crops a random window, another one each epoch
        train.set_epoch(epoch)
        window = train.prepare(row, train._rng(row))["audio"]
        offsets.add(int(np.argmin([np.abs(full[o:o + 1000] - window[:1000]).sum()
                                   for o in range(0, full.size - 160000, 160)])))
    assert len(offsets) > 1
    assert np.array_equal(evaluate.prepare(row, evaluate._rng(row))["audio"], np.clip(full[:160000], -1, 1))
    with_prompt = {**row, "instruction": f"{AUDIO_PROMPT} Species?"}
    assert train.prepare(with_prompt, train._rng(with_prompt))["instruction"] == f"{AUDIO_PROMPT} Species?"


def _augmenting(noise_dir, **kwargs) -> TextAudioTransform:
    noise = [str(p) for p in sorted(noise_dir.iterdir())]
    return _transform(noise_files=noise, noise_prob=0.5, mixup_prob=0.5, noise_replace_prob=0.3, **kwargs)


def test_augmentations_depend_on_seed_epoch_and_row_only(mixed_task_dataset, noise_dir):
    dataset = load_text_audio_dataset(AudioDatasetConfig(path=str(mixed_task_dataset)))
    forward = apply_transform(dataset, _augmenting(noise_dir))
    again = apply_transform(dataset, _augmenting(noise_dir))
    indices = list(range(len(dataset)))
    first = [forward[i] for i in indices]
    backward = [again[i] for i in reversed(indices)][::-1]  # other order, other object: the same examples
    for a, b in zip(first, backward):
        assert np.array_equal(a["audio"], b["audio"]) and a["output"] == b["output"]
    clean = [apply_transform(dataset, _transform())[i] for i in indices]
    assert any(not np.array_equal(a["audio"], c["audio"]) for a, c in zip(first, clean)), "nothing was augmented"
    transform = forward._format_kwargs["transform"]
    transform.set_epoch(1)
    assert any(not np.array_equal(a["audio"], forward[i]["audio"]) for i, a in zip(indices, first))


def test_noise_replacement_answers_none_for_detection_only(mixed_task_dataset, noise_dir):
    rows = _rows(load_text_audio_dataset(AudioDatasetConfig(path=str(mixed_task_dataset))))
    transform = _transform(noise_files=[str(p) for p in noise_dir.iterdir()], noise_replace_prob=1.0,
                           random_crop=False)
    for row in rows:
        example = transform.prepare(row, transform._rng(row))
        clip = decode_audio(row["audio"])[:160000]
        if row["task"].endswith("detection"):
            assert example["output"] == NONE_ANSWER and example["audio"].size == 160000
            assert abs(np.corrcoef(example["audio"][: clip.size], clip)[0, 1]) < 0.2
        else:
            assert example["output"] == row["output"] and np.array_equal(example["audio"], np.clip(clip, -1, 1))


def test_mixup_merges_partners_from_the_same_task(mixed_task_dataset):
    dataset = load_text_audio_dataset(AudioDatasetConfig(path=str(mixed_task_dataset)))
    mixed = apply_transform(dataset, _transform(mixup_prob=1.0, mixup_max_partners=1))
    detection_labels = {row["output"] for row in dataset if row["task"].endswith("detection")}
    for index, row in enumerate(dataset):
        example = mixed[index]
        if row["task"].endswith("detection"):
            labels = example["output"].split(", ")
            assert row["output"] in labels and set(labels) <= detection_labels
            options = example["instruction"].rpartition("? ")[2].rstrip(".").split(", ")
            assert set(labels) <= set(options)
        else:
            assert example["output"] == row["output"]


def test_bad_rows_are_replaced_in_map_style_data_and_dropped_from_streams(species_clips, tmp_path):
    good = species_rows(species_clips)
    rows = good + [{**good[0], "output": ""}, {**good[1], "file_name": str(tmp_path / "gone.wav")}]
    folder = write_metadata(tmp_path / "data", rows, name="metadata.jsonl")  # CSV cannot tell "" from missing
    config = AudioDatasetConfig(path=str(folder))
    labels = {clip["label"] for clip in species_clips}

    mapped = apply_transform(load_text_audio_dataset(config), _transform())
    examples = [mapped[i] for i in range(len(mapped))]
    assert len(examples) == len(rows) and {e["output"] for e in examples} <= labels
    skipped = np.sum([e["skipped_rows"] for e in examples], axis=0)
    assert skipped[SKIP_REASONS.index("empty_answer")] >= 1 and skipped[SKIP_REASONS.index("unreadable_audio")] >= 1

    streamed = _rows(apply_transform(load_text_audio_dataset(config, streaming=True), _transform()))
    assert [e["output"] for e in streamed] == [row["output"] for row in good]
    assert np.sum([e["skipped_rows"] for e in streamed], axis=0).tolist() == [1, 1, 0, 0]


def test_collator_labels_only_the_answer(tiny_model_dir, species_clips):
    from naturelm import NatureLMProcessor

    processor = NatureLMProcessor.from_pretrained(tiny_model_dir)
    collator = NatureLMDataCollator(processor)
    examples = [{"audio": decode_audio(c["path"]), "instruction": f"{AUDIO_PROMPT} {DETECTION.format('x')}",
                 "output": c["label"], "skipped_rows": [0, i, 0, 0]} for i, c in enumerate(species_clips[:2])]
    batch = collator(examples)
    assert batch["skipped_rows"].tolist() == [[0, 0, 0, 0], [0, 1, 0, 0]]
    assert batch["input_features"].shape[0] == 2
    for row, example in enumerate(examples):
        labelled = batch["labels"][row][batch["labels"][row] != -100]
        assert processor.decode(labelled) == example["output"] + processor.answer_suffix
        prompt_ids = processor.tokenizer(collator.prompt(example["instruction"]).replace(
            "<AudioHere>", processor.audio_token * processor.num_audio_tokens), add_special_tokens=False).input_ids
        assert batch["input_ids"][row, : len(prompt_ids)].tolist() == prompt_ids
        assert (batch["labels"][row, : len(prompt_ids)] == -100).all()
    assert "skipped_rows" not in NatureLMDataCollator(processor, report_skipped=False)(examples)
