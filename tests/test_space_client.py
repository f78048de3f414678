"""Every endpoint of the Space through `gradio_client`, as a script user calls it, checked against the package run
in-process on the same tiny parity model: the Space must give exactly what `naturelm` gives."""

import csv
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from audio_fixture import chat_recording, num_windows, several_windows_recording, space_accepts, window_starts

gradio_client = pytest.importorskip("gradio_client", reason="needs the `space` extra: pip install -e '.[space]'")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from audio_naturelm import stream_windows  # noqa: E402
from naturelm.infer import CSV_COLUMNS, RAVEN_COLUMNS, MemoryWriter, ResultWriter, run  # noqa: E402
from naturelm.loading import load  # noqa: E402
from pipeline_naturelm import AudioWindow, generate_answers  # noqa: E402

SPECIES = "What is the common name for the focal species in the audio? Answer:"


@pytest.fixture(scope="module")
def client(space_server, tmp_path_factory) -> Client:
    return Client(space_server.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def accepted(space_server, audio_recordings):
    """The shared recordings this Space takes (under its upload and length caps)."""
    recordings = space_accepts(audio_recordings, space_server.settings)
    assert recordings, "no shared recording fits under the test Space's caps"
    return recordings


@pytest.fixture(scope="module")
def max_windows(space_server) -> int:
    return int(space_server.settings["NATURELM_MAX_WINDOWS"])


@pytest.fixture(scope="module")
def longest(accepted, max_windows):
    """The longest recording the Space takes, and classifies in one request (10-s windows every 10 s)."""
    return max((r for r in accepted if num_windows(r.header_seconds, 10, 10) <= max_windows),
               key=lambda r: r.header_seconds)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load(str(tiny_model_dir), dtype=torch.float32, merge_adapter=False)  # as the Space loads it


def _text(message: dict) -> str:
    return " ".join(part["text"] for part in message["content"] if part["type"] == "text")


def _answer(model, clip: np.ndarray, messages: list[dict], alpha: float, max_new_tokens: int) -> str:
    net, processor = model
    net.set_merging_alpha(alpha)
    try:
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        window = AudioWindow(0.0, 10.0, clip, prompt)
        return generate_answers(net, processor, [window], max_new_tokens=max_new_tokens, do_sample=False)[0].strip()
    finally:
        net.set_merging_alpha(1.0)


def test_the_space_lists_its_three_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/chat", "/long_recording", "/classify"}
    assert [p["parameter_name"] for p in endpoints["/long_recording"]["parameters"]] == [
        "audio", "query", "window", "hop", "alpha", "max_new_tokens"]


def test_chat_answers_as_the_model_does_and_keeps_the_conversation(client, model, accepted):
    frog = chat_recording(accepted).path  # longer than the 10 s the chat hears
    clip = next(stream_windows(frog, 10.0, 10.0))[2]

    history, box = client.predict(handle_file(frog), SPECIES, [], 1.0, 6, api_name="/chat")
    assert box == "" and [m["role"] for m in history] == ["user", "assistant"]
    assert _text(history[0]) == SPECIES
    first = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": SPECIES}]}]
    assert _text(history[1]) == _answer(model, clip, first, 1.0, 6)

    follow_up = "Is it calling at night?"
    history, _ = client.predict(handle_file(frog), follow_up, history, 1.0, 6, api_name="/chat")
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    turns = first + [{"role": "assistant", "content": _text(history[1])}, {"role": "user", "content": follow_up}]
    assert _text(history[3]) == _answer(model, clip, turns, 1.0, 6)

    # The merging-α slider reaches the model (the tiny model's LoRA update is large enough to change the answer).
    history, _ = client.predict(handle_file(frog), SPECIES, [], 0.0, 6, api_name="/chat")
    expected = _answer(model, clip, first, 0.0, 6)
    assert _text(history[1]) == expected and expected != _answer(model, clip, first, 1.0, 6)


def test_long_recording_gives_the_table_and_the_raven_file_of_naturelm_infer(client, model, accepted, max_windows,
                                                                           tmp_path):
    chosen = several_windows_recording(accepted, 10, 5, max_windows)
    recording = chosen.path  # several 10-s windows every 5 s, the last one partial
    summary, picture, table, raven, table_csv = client.predict(
        handle_file(recording), "Caption the audio.", 10, 5, 1.0, 4, api_name="/long_recording")

    local = tmp_path / recording.name
    shutil.copy(recording, local)
    writer = ResultWriter(tmp_path / "reference.txt", "raven", resume=False, overwrite=False)
    run(*model, [local], writer, "Caption the audio.", None, 10, 5, 8, progress=False, max_new_tokens=4,
        do_sample=False)
    writer.close()
    assert Path(raven).name == f"{recording.stem}.selections.txt"
    assert Path(raven).read_text() == (tmp_path / "reference.txt").read_text()

    rows = list(csv.reader(io.StringIO(Path(raven).read_text()), delimiter="\t"))
    starts = window_starts(chosen.decoded_seconds, 10, 5)
    assert rows[0] == RAVEN_COLUMNS and [float(r[3]) for r in rows[1:]] == starts
    answer = RAVEN_COLUMNS.index("answer")
    assert [r[:3] for r in table["data"]] == [[float(r[3]), float(r[4]), r[answer]] for r in rows[1:]]
    records = list(csv.DictReader(io.StringIO(Path(table_csv).read_text())))
    assert list(records[0]) == CSV_COLUMNS and [r["answer"] for r in records] == [r[answer] for r in rows[1:]]
    assert f"{len(starts)} windows of 10 s every 5 s" in summary

    from PIL import Image

    with Image.open(picture) as image:
        assert image.format == "PNG" and image.width > 800 and image.height > 300


def test_classify_scores_the_labels_like_the_package(client, model, longest):
    recording = longest.path
    windows = num_windows(longest.decoded_seconds, 10, 10)
    assert windows > 1, "need a recording of several 10-s windows"
    typed = "American Robin\nGreen Treefrog, Gray Wolf\n\nNone\nGray Wolf"
    labels = ["American Robin", "Green Treefrog", "Gray Wolf", "None"]
    bars, summary, per_window, download = client.predict(handle_file(recording), typed, SPECIES, 1.0,
                                                         api_name="/classify")

    writer = MemoryWriter()
    run(*model, [recording], writer, SPECIES, labels, 10, 10, 8, progress=False)
    rows, error = writer.results[str(recording)]
    assert error is None and len(rows) == windows
    expected = {label: np.mean([dict(zip(r["labels"], r["scores"]))[label] for r in rows]) for label in labels}

    got = {label: probability for label, probability in bars["data"]}
    assert set(got) == set(labels) and sum(got.values()) == pytest.approx(1.0, abs=1e-5)
    assert got == pytest.approx(expected, abs=1e-5)
    assert [p for _, p in bars["data"]] == sorted(got.values(), reverse=True)
    best = max(expected, key=expected.get)
    assert f"**{best}**" in summary and f"mean over {windows} windows" in summary
    assert [r[2] for r in per_window["data"]] == [r["labels"][0] for r in rows]
    assert len(list(csv.DictReader(open(download)))) == windows


def test_limits_and_mistakes_come_back_as_clear_messages(client, longest, max_windows, space_server, tmp_path):
    long_file = tmp_path / "seventy_seconds.wav"  # 70 s at 4 kHz: under the 1 MB cap, over the 60 s cap
    soundfile.write(long_file, np.zeros(70 * 4000, np.float32), 4000, subtype="PCM_16")
    robin = handle_file(longest.path)
    too_many = num_windows(longest.header_seconds, 2, 1)  # 2-s windows every second
    assert too_many > max_windows, f"{longest.name} is too short to exceed the Space's {max_windows} windows"
    cases = [
        ((handle_file(long_file), SPECIES, [], 1.0, 5), "/chat", "70.0 s long; this Space takes recordings up to 60 s"),
        ((None, SPECIES, [], 1.0, 5), "/chat", "Upload or record a recording first"),
        ((robin, "  ", [], 1.0, 5), "/chat", "Type a question"),
        ((robin, SPECIES, 2, 1, 1.0, 5), "/long_recording",
         f"makes {too_many} windows over {longest.header_seconds:.1f} s; this Space runs at most {max_windows}"),
        ((robin, SPECIES, 10, 0, 1.0, 5), "/long_recording", "Value 0 is less than minimum value 1"),  # the slider
        ((robin, "Gray Wolf", SPECIES, 1.0), "/classify", "at least two labels"),
    ]
    for args, api_name, message in cases:
        with pytest.raises(AppError, match=message.replace(".", r"\.").replace("?", r"\?")):
            client.predict(*args, api_name=api_name)

    big = tmp_path / "two_megabytes.wav"
    soundfile.write(big, np.zeros(2 * 2**20 // 2, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(ValueError, match="exceeds the maximum file size of 1048576 bytes"):
        client.predict(handle_file(big), SPECIES, [], 1.0, 5, api_name="/chat")
    # Gradio logs the traceback of every gr.Error; anything else raised in the Space is a bug.
    raised = [line for line in space_server.log.read_text().splitlines()
              if re.match(r"[\w.]+(Error|Exception)\b.*:", line)]
    assert raised and all(line.startswith("gradio.exceptions.Error: ") for line in raised), raised
