"""`naturelm serve`: the model over HTTP, loaded once, batched across clients.

Two front ends share one queue and one engine thread:

- BEANS-Next's `predictions_v1` contract (`GET /health`, `GET /info`, `POST /predict`), so the benchmark reaches the
  model as it reaches every other model;
- OpenAI-style `POST /v1/chat/completions` with `input_audio` content parts, and `GET /v1/models`, so the `openai`
  client and tools built on it work unchanged. `candidate_labels` in the body scores those labels instead of
  generating (the engine's label task) and returns their probabilities.

Every request item is checked and its audio decoded (through `audio_naturelm`, the one audio reader) before it is
queued; a bad item gets its own error and never reaches the model. One thread takes queued items, waits at most
`max_wait_s` for more that share the same decoding settings, and runs them through the engine's batch step
(`answer_windows` with a generation or label task) `batch_size` at a time. A client that goes away has its queued
items dropped.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from audio_naturelm import AudioError, audio_info, read_audio
from processing_naturelm import AUDIO_PLACEHOLDER, AUDIO_SPAN, audio_instruction

# The engine: its batch step and tasks, from this one place.
from .engine import AudioWindow, answer_windows, generation_task, label_task

PREDICTIONS_V1 = "predictions_v1"
PAYLOAD_TYPES = ("base64_wav", "file_path", "file_url")
MAX_NEW_TOKENS = 4096  # a request's max_tokens above this is refused rather than run for minutes


class RequestError(ValueError):
    """A request (or one item of a batch) that cannot be answered; `status` is the HTTP status it deserves when it
    fails a whole request."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class ServeSettings:
    """What the operator allows: where to listen, who may call, and how much work one request may ask for."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    allowed_dirs: list[Path] = field(default_factory=list)
    allow_urls: bool = False
    max_batch_size: int = 32
    batch_size: int = 8
    max_wait_s: float = 0.02
    max_queue: int = 256
    max_body_bytes: int = 64 * 2**20
    max_audio_seconds: float = 120.0
    url_timeout_s: float = 10.0

    def check(self) -> None:
        """Refuses unsafe or meaningless settings before the model is loaded."""
        if not _is_loopback(self.host) and not self.api_key:
            raise ValueError(f"--host {self.host} is reachable from other machines: set --api-key (or the "
                             "NATURELM_API_KEY environment variable) so that only callers with the token are served.")
        for name in ("max_batch_size", "batch_size", "max_queue", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.max_wait_s < 0 or self.max_audio_seconds <= 0:
            raise ValueError("--max-wait-ms must be >= 0 and --max-audio-seconds > 0.")
        missing = [str(d) for d in self.allowed_dirs if not Path(d).is_dir()]
        if missing:
            raise ValueError(f"--allow-path must name existing directories; not one: {', '.join(missing)}.")
        self.allowed_dirs = [Path(d).resolve() for d in self.allowed_dirs]

    @property
    def payload_types(self) -> list[str]:
        return ["base64_wav"] + ["file_path"] * bool(self.allowed_dirs) + ["file_url"] * self.allow_urls


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Audio in ------------------------------------------------------------------------------------------------------------


def _fetch_url(url: str, settings: ServeSettings) -> bytes:
    """Downloads a `file_url` clip, refusing any host that resolves to a loopback, private, link-local or otherwise
    non-public address. Plain http connects to the address that was checked (no second DNS answer can swap it);
    https verifies the certificate of the named host, which an internal service cannot present. No redirects."""
    import httpx

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AudioError(f"file_url must be an http(s) URL, got {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)}
    except socket.gaierror as error:
        raise AudioError(f"file_url host {parts.hostname!r} cannot be resolved ({error})") from None
    for address in sorted(addresses):
        ip = ipaddress.ip_address(address.split("%")[0])
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global:
            raise AudioError(f"file_url host {parts.hostname!r} resolves to {ip}, a loopback, private or reserved "
                             "address; only public addresses are fetched")
    target, headers = url, {}
    if parts.scheme == "http":
        ip = sorted(addresses)[0]
        host = f"[{ip}]" if ":" in ip else ip
        target = urlunsplit(("http", f"{host}:{port}", parts.path or "/", parts.query, ""))
        headers["Host"] = parts.netloc.rsplit("@", 1)[-1]
    try:
        with httpx.stream("GET", target, headers=headers, timeout=settings.url_timeout_s,
                          follow_redirects=False) as response:
            if response.status_code != 200:
                raise AudioError(f"file_url {url} answered HTTP {response.status_code} (redirects are not followed)")
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > settings.max_body_bytes:
                    raise AudioError(f"file_url {url} is larger than {settings.max_body_bytes} bytes")
            return bytes(data)
    except httpx.HTTPError as error:
        raise AudioError(f"file_url {url} cannot be fetched ({type(error).__name__}: {error})") from None


def load_clip(payload_type: str, data: str, settings: ServeSettings) -> np.ndarray:
    """One audio slot as 16 kHz mono float32, through the one audio reader; `AudioError` says why not."""
    if not isinstance(data, str):
        raise AudioError("audio data must be a string")
    if payload_type == "base64_wav":
        try:
            source: bytes | Path = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise AudioError("base64_wav data is not valid base64") from None
    elif payload_type == "file_path":
        if not settings.allowed_dirs:
            raise AudioError("file_path payloads are disabled on this server (the operator allows them with "
                             "--allow-path DIR)")
        source = Path(data).resolve()
        if not any(source.is_relative_to(folder) for folder in settings.allowed_dirs):
            raise AudioError(f"file_path {data!r} is outside the directories this server may read")
    elif payload_type == "file_url":
        if not settings.allow_urls:
            raise AudioError("file_url payloads are disabled on this server (the operator enables them with "
                             "--allow-urls)")
        source = _fetch_url(data, settings)
    else:
        raise AudioError(f"payload_type must be one of {', '.join(PAYLOAD_TYPES)}, got {payload_type!r}")
    frames, rate = audio_info(source)
    if frames / rate > settings.max_audio_seconds:
        raise AudioError(f"clip is {frames / rate:.1f} s long; this server takes clips up to "
                         f"{settings.max_audio_seconds:g} s")
    return read_audio(source)


# Requests to jobs ----------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One prompt with its clips, queued for the engine; `key` groups jobs that can share a batch (same task)."""

    prompt: str
    clips: list[np.ndarray]
    key: tuple
    future: Future = field(default_factory=Future)


def decoding_kwargs(config: dict) -> dict:
    """`generate` settings from a request: `max_tokens` (or `max_completion_tokens`), `temperature` (0: greedy,
    else sampling), `top_p`, `num_beams` (or `beams`). Missing ones keep the checkpoint's generation config (the
    original's 2 beams); unknown keys are ignored, as the contract asks."""
    kwargs: dict = {}
    max_tokens = config.get("max_tokens", config.get("max_completion_tokens"))
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_NEW_TOKENS:
            raise RequestError(f"max_tokens must be an integer from 1 to {MAX_NEW_TOKENS}, got {max_tokens!r}")
        kwargs["max_new_tokens"] = max_tokens
    beams = config.get("num_beams", config.get("beams"))
    if beams is not None:
        if not isinstance(beams, int) or isinstance(beams, bool) or not 1 <= beams <= 16:
            raise RequestError(f"num_beams must be an integer from 1 to 16, got {beams!r}")
        kwargs["num_beams"] = beams
    temperature = config.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
            raise RequestError(f"temperature must be a number >= 0, got {temperature!r}")
        if temperature == 0:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=float(temperature))
            kwargs.setdefault("num_beams", 1)
            top_p = config.get("top_p")
            if top_p is not None:
                if not isinstance(top_p, (int, float)) or isinstance(top_p, bool) or not 0 < top_p <= 1:
                    raise RequestError(f"top_p must be a number in (0, 1], got {top_p!r}")
                kwargs["top_p"] = float(top_p)
    return kwargs


def task_key(config: dict) -> tuple:
    """What a job asks of the engine: scores over `candidate_labels` when given, else generation with its settings."""
    labels = config.get("candidate_labels")
    if labels is None:
        return ("generate", tuple(sorted(decoding_kwargs(config).items())))
    if (not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x.strip() for x in labels)
            or len(set(labels)) != len(labels)):
        raise RequestError("candidate_labels must be a non-empty list of distinct, non-blank strings")
    return ("labels", tuple(labels))


def _task(key: tuple):
    return label_task(list(key[1])) if key[0] == "labels" else generation_task(**dict(key[1]))


def render_prompt(processor, messages: list[dict], clips: int) -> str:
    """The chat prompt with each clip at its `<AudioHere>` placeholder (any message: system, user, earlier turns).
    Messages without a placeholder about one clip get it in front of the first user message, by the original
    NatureLM rule (`naturelm infer` asks that way, so both give the same prompt for the same query)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {role, content} objects")
    for message in messages:
        if (not isinstance(message, dict) or set(message) != {"role", "content"}
                or not all(isinstance(message[k], str) for k in ("role", "content")) or not message["role"]):
            raise RequestError("each message must be an object with exactly a string `role` and a string `content`")
    if clips == 0:
        raise RequestError("NatureLM answers about audio: give at least one audio input")
    placeholders = sum(m["content"].count(AUDIO_PLACEHOLDER) for m in messages)
    messages = [dict(m) for m in messages]
    if placeholders == 0 and clips == 1:
        users = [m for m in messages if m["role"] == "user"]
        if not users:
            raise RequestError("messages hold no user message to place the audio in")
        users[0]["content"] = audio_instruction(users[0]["content"])
    elif placeholders != clips:
        raise RequestError(f"messages hold {placeholders} '{AUDIO_PLACEHOLDER}' placeholders but {clips} audio inputs "
                           "were given; give one audio input per placeholder")
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# The queue and the engine thread ------------------------------------------------------------------------------------


class QueueFull(RuntimeError):
    pass


class Batcher:
    """The one engine thread: takes queued jobs, waits up to `max_wait_s` for more with the same task, and answers
    up to `batch_size` of them with one `answer_windows` call. A batch that fails is retried one job at a time, so
    only the job at fault gets the error."""

    def __init__(self, model, processor, settings: ServeSettings):
        self.model, self.processor, self.settings = model, processor, settings
        self._jobs: list[Job] = []
        self._lock = threading.Condition()
        self._closed = False
        self.answered = 0
        self.dropped = 0
        self.running = 0
        self._thread = threading.Thread(target=self._loop, daemon=True, name="naturelm-serve-engine")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join()
        for job in self._jobs:
            job.future.cancel()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    @property
    def queued(self) -> int:
        return len(self._jobs)

    def submit(self, jobs: list[Job]) -> None:
        """Queues all of a request's jobs, or none of them when the queue cannot take them all."""
        with self._lock:
            if len(self._jobs) + len(jobs) > self.settings.max_queue:
                raise QueueFull(f"the server's queue is full ({len(self._jobs)} of {self.settings.max_queue} "
                                "items waiting); retry shortly")
            self._jobs.extend(jobs)
            self._lock.notify_all()

    def _next_batch(self) -> list[Job] | None:
        with self._lock:
            while not self._jobs and not self._closed:
                self._lock.wait()
            if self._closed:
                return None
            key = self._jobs[0].key
            deadline = time.monotonic() + self.settings.max_wait_s
            while (sum(job.key == key for job in self._jobs) < self.settings.batch_size and not self._closed
                   and (left := deadline - time.monotonic()) > 0):
                self._lock.wait(left)
            batch = [job for job in self._jobs if job.key == key][: self.settings.batch_size]
            taken = {id(job) for job in batch}
            self._jobs = [job for job in self._jobs if id(job) not in taken]
        running = [job for job in batch if job.future.set_running_or_notify_cancel()]
        self.dropped += len(batch) - len(running)
        return running

    def _answer(self, jobs: list[Job]) -> list[dict]:
        windows = [AudioWindow(0.0, max(len(c) for c in job.clips) / self.processor.feature_extractor.sampling_rate,
                               job.clips, job.prompt) for job in jobs]
        return answer_windows(self.model, self.processor, _task(jobs[0].key), windows)

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            self.running = len(batch)
            try:
                results = list(zip(batch, self._answer(batch)))
            except Exception:  # noqa: BLE001 - find the job at fault: each alone
                results = []
                for job in batch:
                    try:
                        results.append((job, self._answer([job])[0]))
                    except Exception as error:  # noqa: BLE001 - one job's failure is that job's answer
                        job.future.set_exception(error)
            self.answered += len(batch)
            self.running = 0
            for job, row in results:
                job.future.set_result(row)


# The HTTP app ---------------------------------------------------------------------------------------------------------


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """Errors in the OpenAI shape (`{"error": {"message", ...}}`), which its client reads, for every endpoint."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 413: "request_too_large",
            429: "rate_limit_error", 503: "server_overloaded"}.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status,
                        headers=headers)


async def _read_json(request: Request, limit: int) -> object:
    """The request body as JSON, refused with 413 past `limit` bytes (announced or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body is {declared} bytes; this server takes at most {limit}", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(f"request body is larger than {limit} bytes, the most this server takes", 413)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(f"request body is not valid JSON ({error})") from None


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class ClientGone(Exception):
    pass


async def _results(request: Request, jobs: list[Job]) -> list[object]:
    """Each job's row (or exception); if the client goes away first, its jobs still queued are dropped."""
    gathered = asyncio.gather(*(asyncio.wrap_future(job.future) for job in jobs), return_exceptions=True)
    watcher = asyncio.ensure_future(_until_disconnected(request))
    await asyncio.wait({gathered, watcher}, return_when=asyncio.FIRST_COMPLETED)
    watcher.cancel()
    if not gathered.done():
        gathered.cancel()
        for job in jobs:
            job.future.cancel()
        raise ClientGone
    return gathered.result()


def _job_error(error: BaseException) -> str:
    if isinstance(error, (AudioError, RequestError)):
        return str(error)
    return f"the model failed on this item ({type(error).__name__}: {error})"


def create_app(model, processor, settings: ServeSettings, model_name: str, model_revision: str) -> FastAPI:
    """The FastAPI app around one loaded model; the engine thread runs for the app's lifetime."""
    batcher = Batcher(model, processor, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        batcher.close()

    async def authorize(request: Request) -> None:
        sent = request.headers.get("authorization", "").encode()
        if (settings.api_key and request.url.path != "/health"
                and not hmac.compare_digest(sent, f"Bearer {settings.api_key}".encode())):
            raise RequestError("missing or wrong bearer token (send Authorization: Bearer <key>)", 401)

    app = FastAPI(title="NatureLM-audio", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(authorize)])

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        return _error(error.status, str(error))

    @app.exception_handler(QueueFull)
    async def overloaded(request: Request, error: QueueFull) -> JSONResponse:
        return _error(429, str(error), {"Retry-After": "1"})

    def prepare(config: dict, messages: list, audio: list) -> Job:
        """A request item as a queued job: decoded clips, rendered prompt, task key; raises saying what is wrong."""
        key = task_key(config)
        if not isinstance(audio, list):
            raise RequestError("audio_inputs must be a list")
        prompt = render_prompt(processor, messages, len(audio))  # before decoding: cheap refusals first
        clips = []
        for number, slot in enumerate(audio):
            if not isinstance(slot, dict) or not {"payload_type", "data"} <= set(slot):
                raise RequestError(f"audio_inputs[{number}] must be an object with payload_type, data, sample_rate")
            try:
                clips.append(load_clip(slot["payload_type"], slot["data"], settings))
            except AudioError as error:
                raise AudioError(f"audio_inputs[{number}]: {error}") from None
        return Job(prompt, clips, key)

    def predict_item(item: dict) -> Job:
        if not {"messages", "audio_inputs", "generation_config"} <= set(item):
            raise RequestError("a request item needs sample_id, messages, audio_inputs and generation_config")
        config = item["generation_config"]
        if not isinstance(config, dict):
            raise RequestError("generation_config must be an object")
        return prepare(config, item["messages"], item["audio_inputs"])

    def check_ready() -> None:
        if not batcher.alive:
            raise RequestError("the engine is not running (the server is starting or stopping)", 503)

    @app.get("/health")
    async def health() -> JSONResponse:
        if not batcher.alive:
            return JSONResponse({"status": "unavailable"}, 503)
        return JSONResponse({"status": "ok", "queued": batcher.queued, "running": batcher.running,
                             "answered": batcher.answered, "dropped": batcher.dropped})

    @app.get("/info")
    async def info() -> dict:
        return {
            "name": "naturelm-serve", "model": model_name, "model_revision": model_revision,
            "audio_payload_types": settings.payload_types, "max_batch_size": settings.max_batch_size,
            "supports_batching": True, "schema_versions": [PREDICTIONS_V1],
            "audio_sample_rate_hz": processor.feature_extractor.sampling_rate,
        }

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        check_ready()
        started = time.perf_counter()
        body = await _read_json(request, settings.max_body_bytes)
        if not isinstance(body, dict) or set(body) != {"schema_version", "requests"}:
            raise RequestError("the body must be an object with exactly `schema_version` and `requests`")
        if body["schema_version"] != PREDICTIONS_V1:
            raise RequestError(f"schema_version must be {PREDICTIONS_V1!r}, got {body['schema_version']!r}")
        items = body["requests"]
        if not isinstance(items, list):
            raise RequestError("`requests` must be a list")
        if len(items) > settings.max_batch_size:
            raise RequestError(f"{len(items)} request items; this server takes at most max_batch_size="
                               f"{settings.max_batch_size} per call (see GET /info)", 413)
        ids = [item.get("sample_id") if isinstance(item, dict) else None for item in items]
        if not all(isinstance(sample_id, str) and sample_id for sample_id in ids):
            raise RequestError("every request item must be an object with a non-empty string `sample_id`")
        duplicates = sorted({sample_id for sample_id in ids if ids.count(sample_id) > 1})
        if duplicates:
            raise RequestError(f"sample_id values must be unique within a batch; repeated: {', '.join(duplicates)}")

        async def attempt(item: dict) -> Job | str:
            try:
                return await asyncio.to_thread(predict_item, item)
            except (AudioError, RequestError) as error:
                return str(error)

        prepared = await asyncio.gather(*(attempt(item) for item in items))
        jobs = [job for job in prepared if isinstance(job, Job)]
        batcher.submit(jobs)
        try:
            outcomes = iter(await _results(request, jobs))
        except ClientGone:
            return JSONResponse({}, 499)
        latency = time.perf_counter() - started
        responses = []
        for sample_id, job in zip(ids, prepared):
            outcome = next(outcomes) if isinstance(job, Job) else None
            if isinstance(job, str) or isinstance(outcome, BaseException):
                error = job if isinstance(job, str) else _job_error(outcome)
                responses.append({"sample_id": sample_id, "predictions": [], "error": error, "latency_sec": latency})
            else:
                predictions = outcome["labels"] if "labels" in outcome else [outcome["text"]]
                responses.append({"sample_id": sample_id, "predictions": predictions, "error": None,
                                  "latency_sec": latency})
        return JSONResponse({"schema_version": PREDICTIONS_V1, "responses": responses})

    def finish_reason(outcome: dict, key: tuple) -> str:
        """"length" when the answer used all the new tokens it was allowed (counted again from its text)."""
        if "labels" in outcome:
            return "stop"
        limit = dict(key[1]).get("max_new_tokens", model.generation_config.max_new_tokens)
        used = len(processor.tokenizer(outcome["text"], add_special_tokens=False).input_ids)
        return "length" if limit is not None and used >= limit else "stop"

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "naturelm"}]}

    def chat_job(body: object) -> Job:
        """An OpenAI chat request as a job: text parts joined by spaces, each `input_audio` part a placeholder."""
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise RequestError("the body must be an object with a `messages` list")
        if body.get("stream"):
            raise RequestError("stream=true is not supported; ask without streaming")
        if body.get("n", 1) != 1:
            raise RequestError("n must be 1")
        messages, audio = [], []
        for message in body["messages"]:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise RequestError("each message must be an object with a string `role`")
            content = message.get("content")
            if isinstance(content, list):
                texts = []
                for part in content:
                    kind = part.get("type") if isinstance(part, dict) else None
                    if kind == "text" and isinstance(part.get("text"), str):
                        texts.append(part["text"])
                    elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
                        texts.append(AUDIO_SPAN)
                        audio.append({"payload_type": "base64_wav", "data": part["input_audio"].get("data")})
                    else:
                        raise RequestError(f"unsupported content part {kind!r}: use `text` and `input_audio` parts")
                content = " ".join(texts)
            if not isinstance(content, str):
                raise RequestError("message content must be a string or a list of content parts")
            messages.append({"role": message["role"], "content": content})
        return prepare(body, messages, audio)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        check_ready()
        body = await _read_json(request, settings.max_body_bytes)
        try:
            job = await asyncio.to_thread(chat_job, body)
        except AudioError as error:
            raise RequestError(str(error)) from None
        batcher.submit([job])
        try:
            (outcome,) = await _results(request, [job])
        except ClientGone:
            return JSONResponse({}, 499)
        if isinstance(outcome, BaseException):
            return _error(500, _job_error(outcome))
        reply = {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": outcome.get("text")},
                         "finish_reason": finish_reason(outcome, job.key)}],
        }
        if "labels" in outcome:
            reply["choices"][0]["message"]["content"] = outcome["labels"][0]
            reply["label_scores"] = {"labels": outcome["labels"], "scores": outcome["scores"]}
        return JSONResponse(reply)

    return app


def serve(model, processor, settings: ServeSettings, model_name: str, model_revision: str) -> int:
    """Serves until interrupted (Ctrl-C or SIGTERM)."""
    import uvicorn

    app = create_app(model, processor, settings, model_name, model_revision)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=5)
    return 0


__all__ = ["Batcher", "ServeSettings", "create_app", "decoding_kwargs", "load_clip", "render_prompt", "serve"]
