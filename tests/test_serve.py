"""`naturelm serve --smoke` as a real process on 127.0.0.1, driven as clients drive it: raw HTTP (the predictions_v1
contract of BEANS-Next), the `openai` client, a client killed mid-request, and the same answer as `naturelm infer`."""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile

MAX_BATCH = 6  # /predict items per call (413 above)
MAX_QUEUE = 4  # items waiting (429 above): a batch of 5 or 6 is refused whole
MAX_SECONDS = 11.0  # longest clip
MAX_BODY_MB = 2.0
SPAN = "<Audio><AudioHere></Audio>"


@dataclass
class Server:
    url: str
    allowed: Path
    process: subprocess.Popen
    log: Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "naturelm.cli", *args]


def _env(root: Path) -> dict:
    return {**os.environ, "HF_HOME": str(root / "hf_home"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, audio_recordings):
    root = tmp_path_factory.mktemp("serve")
    allowed = root / "allowed"
    allowed.mkdir()
    for recording in audio_recordings:
        (allowed / recording.name).write_bytes(recording.path.read_bytes())
    port = _free_port()
    log = root / "serve.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(
            _command("serve", "--smoke", "--port", str(port), "--allow-path", str(allowed),
                     "--max-batch-size", str(MAX_BATCH), "--max-queue", str(MAX_QUEUE),
                     "--max-audio-seconds", str(MAX_SECONDS), "--max-body-mb", str(MAX_BODY_MB)),
            env=_env(root), stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if process.poll() is not None:
                pytest.fail(f"naturelm serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:  # not listening yet
                pass
            if time.time() > deadline:
                pytest.fail(f"naturelm serve did not answer within 300 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield Server(url, allowed, process, log)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _wav(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    samples = np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * rate)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _item(sample_id: str, audio: list[dict] | None = None, messages: list[dict] | None = None, **config) -> dict:
    audio = [{"payload_type": "base64_wav", "data": _b64(_wav(2.0)), "sample_rate": 16000}] if audio is None else audio
    messages = [{"role": "user", "content": f"{SPAN} What is it?"}] if messages is None else messages
    return {"sample_id": sample_id, "messages": messages, "audio_inputs": audio,
            "generation_config": {"max_tokens": 8, "temperature": 0.0, "num_beams": 1, **config}}


def _predict(server: Server, items: list[dict]) -> httpx.Response:
    return httpx.post(server.url + "/predict", json={"schema_version": "predictions_v1", "requests": items},
                      timeout=300)


def _by_id(response: httpx.Response) -> dict[str, dict]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"schema_version", "responses"} and body["schema_version"] == "predictions_v1"
    return {item["sample_id"]: item for item in body["responses"]}


def _ok(item: dict) -> str:
    assert item["error"] is None, item["error"]
    assert len(item["predictions"]) == 1 and isinstance(item["predictions"][0], str)
    return item["predictions"][0]


def test_health_and_info(server):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    info = httpx.get(server.url + "/info").json()
    assert info["max_batch_size"] == MAX_BATCH and info["supports_batching"] is True
    assert "predictions_v1" in info["schema_versions"]
    assert info["audio_payload_types"] == ["base64_wav", "file_path"]  # file_url is off unless enabled
    assert all(isinstance(info[key], str) and info[key] for key in ("name", "model", "model_revision"))


def test_batch_answers_by_sample_id_with_per_item_errors(server, audio_recordings):
    clip = min(audio_recordings, key=lambda r: r.header_seconds)
    good_path = {"payload_type": "file_path", "data": str(server.allowed / clip.name), "sample_rate": 16000}
    outside = {"payload_type": "file_path", "data": str(clip.path), "sample_rate": 16000}
    first = _by_id(_predict(server, [
        _item("b64", messages=[{"role": "system", "content": "You are a bioacoustician."},
                               {"role": "user", "content": f"{SPAN} Which species?"}]),
        _item("path", [good_path]),
        _item("outside", [outside]),
        _item("no-messages", messages=[]),
    ]))
    assert set(first) == {"b64", "path", "outside", "no-messages"}
    _ok(first["b64"]), _ok(first["path"])
    assert "outside" in first["outside"]["error"] and first["outside"]["predictions"] == []
    assert "messages" in first["no-messages"]["error"]

    second = _by_id(_predict(server, [
        _item("bad-base64", [{"payload_type": "base64_wav", "data": "not base64!", "sample_rate": 16000}]),
        _item("not-audio", [{"payload_type": "base64_wav", "data": _b64(b"RIFF but not a wav"), "sample_rate": 1}]),
        _item("url-off", [{"payload_type": "file_url", "data": "https://example.org/a.wav", "sample_rate": 16000}]),
        _item("too-long", [{"payload_type": "base64_wav", "data": _b64(_wav(MAX_SECONDS + 1)),
                            "sample_rate": 16000}]),
    ]))
    assert "base64" in second["bad-base64"]["error"]
    assert "cannot be decoded" in second["not-audio"]["error"]
    assert "--allow-urls" in second["url-off"]["error"]
    assert f"{MAX_SECONDS:g} s" in second["too-long"]["error"]

    third = _by_id(_predict(server, [
        _item("bad-tokens", max_tokens=-1), _item("bad-labels", candidate_labels=[]),
        _item("two-spans-one-clip", messages=[{"role": "user", "content": f"{SPAN} and {SPAN}?"}]),
        _item("fine", foo="unknown keys are tolerated", max_length_seconds=10),
    ]))
    assert "max_tokens" in third["bad-tokens"]["error"]
    assert "candidate_labels" in third["bad-labels"]["error"]
    assert "2 '<AudioHere>' placeholders but 1 audio" in third["two-spans-one-clip"]["error"]
    _ok(third["fine"])


def test_batch_level_violations(server):
    assert _predict(server, [_item("same"), _item("same")]).status_code == 400
    assert "same" in _predict(server, [_item("same"), _item("same")]).json()["error"]["message"]
    wrong_schema = httpx.post(server.url + "/predict", json={"schema_version": "predictions_v2", "requests": []})
    assert wrong_schema.status_code == 400
    extra_key = httpx.post(server.url + "/predict",
                           json={"schema_version": "predictions_v1", "requests": [], "extra": 1})
    assert extra_key.status_code == 400
    assert httpx.post(server.url + "/predict", content=b"{not json").status_code == 400
    no_id = _item("x")
    del no_id["sample_id"]
    assert _predict(server, [no_id]).status_code == 400

    oversized = _predict(server, [_item(f"s{i}") for i in range(MAX_BATCH + 1)])
    assert oversized.status_code == 413 and f"max_batch_size={MAX_BATCH}" in oversized.json()["error"]["message"]
    queue_full = _predict(server, [_item(f"q{i}") for i in range(MAX_QUEUE + 1)])
    assert queue_full.status_code == 429 and queue_full.headers["retry-after"]
    body = httpx.post(server.url + "/predict", content=b" " * int((MAX_BODY_MB + 0.5) * 2**20),
                      headers={"content-type": "application/json"})
    assert body.status_code == 413


def test_generation_config_is_honoured(server):
    answers = _by_id(_predict(server, [_item("short", max_tokens=3), _item("long", max_tokens=40),
                                       _item("beams", max_tokens=3, num_beams=2)]))
    short, long = _ok(answers["short"]), _ok(answers["long"])
    # greedy: the 3-token answer is where the 40-token one starts (the same inputs, decoded the same way)
    assert long.startswith(short) and len(long) > len(short)
    _ok(answers["beams"])
    sampled = {_ok(_by_id(_predict(server, [_item("hot", max_tokens=20, temperature=5.0)]))["hot"])
               for _ in range(3)}
    assert len(sampled) > 1, "temperature > 0 must sample"


def test_audio_aligned_with_placeholders_in_system_and_earlier_turns(server):
    a, b = _b64(_wav(2.0, seed=1)), _b64(_wav(3.0, seed=2))
    messages = [{"role": "system", "content": f"Reference call: {SPAN}"},
                {"role": "user", "content": "Remember it."}, {"role": "assistant", "content": "Done."},
                {"role": "user", "content": f"Is {SPAN} the same species?"}]

    def parts(first: str, second: str) -> list[dict]:
        """The same conversation as OpenAI content parts (joined by spaces, as the chat template joins them)."""
        contents = [[{"type": "text", "text": "Reference call:"}, {"type": "input_audio", "input_audio": {"data": first}}],
                    "Remember it.", "Done.",
                    [{"type": "text", "text": "Is"}, {"type": "input_audio", "input_audio": {"data": second}},
                     {"type": "text", "text": "the same species?"}]]
        return [{"role": m["role"], "content": c} for m, c in zip(messages, contents)]

    def chat(**body) -> dict:
        reply = httpx.post(server.url + "/v1/chat/completions", timeout=300, json={"model": "naturelm", **body})
        assert reply.status_code == 200, reply.text
        return reply.json()

    slots = [{"payload_type": "base64_wav", "data": clip, "sample_rate": 16000} for clip in (a, b)]
    answer = _ok(_by_id(_predict(server, [_item("ab", slots, messages, max_tokens=30)]))["ab"])
    greedy = dict(max_tokens=30, temperature=0, num_beams=1)
    assert chat(messages=parts(a, b), **greedy)["choices"][0]["message"]["content"] == answer
    labels = ["same", "different"]
    ab = chat(messages=parts(a, b), candidate_labels=labels)["label_scores"]
    assert chat(messages=parts(a, b), candidate_labels=labels)["label_scores"] == ab
    assert chat(messages=parts(b, a), candidate_labels=labels)["label_scores"] != ab, \
        "each clip must go to its own placeholder"


def test_prompt_rendering():
    from naturelm.serve import RequestError, render_prompt
    from naturelm.testing_utils import tiny_model_and_processor
    from pipeline_naturelm import build_prompt

    processor = tiny_model_and_processor()[1]
    query = "Which species?"
    assert render_prompt(processor, [{"role": "user", "content": query}], 1) == build_prompt(processor, query)
    turns = [{"role": "system", "content": f"Ref {SPAN}"}, {"role": "user", "content": f"Is {SPAN} it?"}]
    prompt = render_prompt(processor, turns, 2)
    assert prompt.index("system") < prompt.index(f"Ref {SPAN}") < prompt.index("user") < prompt.index(f"Is {SPAN} it?")
    for messages, clips in (([], 1), (turns, 1), (turns, 3), ([{"role": "user", "content": "x"}], 0),
                            ([{"role": "user", "content": "x"}], 2), ([{"role": "user"}], 1)):
        with pytest.raises(RequestError):
            render_prompt(processor, messages, clips)


def test_openai_client(server, audio_recordings):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["naturelm-smoke"]
    clip = min(audio_recordings, key=lambda r: r.header_seconds)
    audio = {"type": "input_audio", "input_audio": {"data": _b64(clip.path.read_bytes()),
                                                    "format": clip.path.suffix.lstrip(".")}}
    messages = [{"role": "user", "content": [audio, {"type": "text", "text": "Which species?"}]}]
    reply = client.chat.completions.create(model="naturelm-smoke", messages=messages, max_tokens=5, temperature=0)
    assert isinstance(reply.choices[0].message.content, str) and reply.choices[0].finish_reason in ("stop", "length")

    labels = ["robin", "wren", "owl"]
    scored = client.chat.completions.create(model="naturelm-smoke", messages=messages,
                                            extra_body={"candidate_labels": labels})
    scores = scored.model_extra["label_scores"]
    assert sorted(scores["labels"]) == sorted(labels) and scores["scores"] == sorted(scores["scores"], reverse=True)
    assert abs(sum(scores["scores"]) - 1) < 1e-4 and scored.choices[0].message.content == scores["labels"][0]

    with pytest.raises(openai.BadRequestError, match="stream"):
        client.chat.completions.create(model="naturelm-smoke", messages=messages, stream=True)
    with pytest.raises(openai.BadRequestError, match="base64"):
        client.chat.completions.create(model="naturelm-smoke", messages=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}]}])


def test_label_scores_over_predict(server):
    answers = _by_id(_predict(server, [_item("labels", candidate_labels=["wren", "robin"])]))
    assert answers["labels"]["error"] is None and sorted(answers["labels"]["predictions"]) == ["robin", "wren"]


def test_client_killed_mid_request_does_not_stall_the_queue(server):
    request = json.dumps({"schema_version": "predictions_v1", "requests": [
        _item(f"k{i}", max_tokens=300) for i in range(MAX_QUEUE)]})
    client = subprocess.Popen([sys.executable, "-c", (
        "import sys, httpx; httpx.post(sys.argv[1], content=sys.stdin.buffer.read(), timeout=600, "
        "headers={'content-type': 'application/json'})"), server.url + "/predict"], stdin=subprocess.PIPE)
    client.stdin.write(request.encode())
    client.stdin.close()
    deadline = time.time() + 120
    while client.poll() is None and time.time() < deadline:
        health = httpx.get(server.url + "/health").json()
        if health["queued"] + health["running"] > 0:
            break
        time.sleep(0.05)
    client.send_signal(signal.SIGKILL)
    assert client.wait() == -signal.SIGKILL, "the client must be killed before its answer for this test to mean anything"
    after = _by_id(_predict(server, [_item("after")]))
    _ok(after["after"])
    health = httpx.get(server.url + "/health").json()
    assert health["queued"] == health["running"] == 0


def test_same_answer_as_infer(server, audio_recordings, tmp_path):
    clip = min(audio_recordings, key=lambda r: r.header_seconds)
    query = "What is the common name for the focal species in the audio? Answer:"
    done = subprocess.run(_command("infer", str(clip.path), "--smoke", "--num-beams", "1", "--max-new-tokens", "12",
                                   "--query", query, "--no-progress"),
                          env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    expected = json.loads(done.stdout.splitlines()[0])["answer"]
    slot = {"payload_type": "file_path", "data": str(server.allowed / clip.name), "sample_rate": 16000}
    answer = _by_id(_predict(server, [_item("same", [slot], [{"role": "user", "content": query}],
                                            max_tokens=12)]))["same"]
    assert _ok(answer) == expected


def test_refuses_other_interfaces_without_a_token(tmp_path):
    done = subprocess.run(_command("serve", "--smoke", "--host", "0.0.0.0"), env={**_env(tmp_path),
                          "NATURELM_API_KEY": ""}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--api-key" in done.stderr


def test_bearer_token():
    from fastapi.testclient import TestClient

    from naturelm.serve import ServeSettings, create_app
    from naturelm.testing_utils import tiny_model_and_processor

    model, processor = tiny_model_and_processor()
    app = create_app(model, processor, ServeSettings(api_key="s3cret"), "naturelm-smoke", "test")
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.get("/info").status_code == 401
        assert client.get("/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/a.wav", "http://localhost/a.wav", "http://10.1.2.3/a.wav",
                                 "http://169.254.169.254/latest", "http://[::1]/a.wav", "http://[::ffff:192.168.0.1]/",
                                 "ftp://example.org/a.wav"])
def test_file_url_never_reaches_private_addresses(url):
    from audio_naturelm import AudioError
    from naturelm.serve import ServeSettings, load_clip

    with pytest.raises(AudioError, match="address|http"):
        load_clip("file_url", url, ServeSettings(allow_urls=True))
