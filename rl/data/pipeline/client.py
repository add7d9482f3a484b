"""Chat clients for the labelling model: any OpenAI-compatible server, or vLLM in this process.

Both expose `submit(ChatRequest) -> Future[ChatReply]`, so the stages send every request of a
round at once and the client decides how they run:

- `OpenAIClient` posts to `{base_url}/chat/completions` over httpx from a pool of
  `max_concurrency` threads (the concurrency limit), with a timeout per request and retries
  with exponential backoff on transport errors, 429 and 5xx; other 4xx fail at once. A request
  with a JSON schema asks for structured output through `response_format` (OpenAI, vLLM and most
  hosted servers) or vLLM's own `structured_outputs` field.
- `LocalEngineClient` runs `vllm.LLM` on one thread that takes every request queued since its
  last batch and generates them together (schema -> `StructuredOutputsParams(json=...)`). Plain
  vLLM, not rollout's MementoEngine: the labeller needs chat templates and structured outputs,
  which MementoEngine's token-id interface does not carry, and no KV eviction.

Token counts come back with every reply: the server's `usage`, or the engine's token ids.
"""

from __future__ import annotations

import os
import queue
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rl.data.pipeline.config import ClientConfig


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]
    max_tokens: int
    json_schema: dict | None = None  # constrain the answer to this schema when supported


@dataclass(frozen=True)
class ChatReply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | ...


class ClientError(RuntimeError):
    """A request that failed for good (retries spent, or a 4xx the server will not change)."""


def make_client(cfg: ClientConfig):
    return LocalEngineClient(cfg) if cfg.backend == "local" else OpenAIClient(cfg)


class OpenAIClient:
    def __init__(self, cfg: ClientConfig):
        import httpx

        self.cfg = cfg
        headers = {}
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.Client(base_url=cfg.base_url.rstrip("/"), headers=headers,
                                  timeout=cfg.timeout_s)
        self._pool = ThreadPoolExecutor(cfg.max_concurrency, thread_name_prefix="chat")

    def submit(self, request: ChatRequest) -> Future:
        return self._pool.submit(self._complete, request)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def body(self, request: ChatRequest) -> dict[str, Any]:
        body = {"model": self.cfg.model, "messages": request.messages,
                self.cfg.max_tokens_key: request.max_tokens, **self.cfg.extra_body}
        if self.cfg.temperature is not None:
            body["temperature"] = self.cfg.temperature
        if self.cfg.chat_template_kwargs:  # vLLM / SGLang servers read it
            body["chat_template_kwargs"] = self.cfg.chat_template_kwargs
        if request.json_schema is not None and self.cfg.structured_outputs == "response_format":
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": request.json_schema, "strict": True}}
        elif request.json_schema is not None and self.cfg.structured_outputs == "vllm":
            body["structured_outputs"] = {"json": request.json_schema}
        return body

    def _complete(self, request: ChatRequest) -> ChatReply:
        import httpx

        body = self.body(request)
        for attempt in range(self.cfg.max_retries + 1):
            try:
                response = self._http.post("/chat/completions", json=body)
            except httpx.TransportError as e:  # connection refused, timeouts, resets
                error = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    return _reply(response)
                error = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code != 429 and response.status_code < 500:
                    raise ClientError(error)
            if attempt < self.cfg.max_retries:
                time.sleep(self.cfg.backoff_s * 2 ** attempt * (1 + 0.25 * random.random()))
        raise ClientError(f"{self.cfg.max_retries + 1} attempts failed; last: {error}")


def _reply(response) -> ChatReply:
    try:
        payload = response.json()
        choice = payload["choices"][0]
        usage = payload.get("usage") or {}
        return ChatReply(choice["message"].get("content") or "", int(usage.get("prompt_tokens", 0)),
                         int(usage.get("completion_tokens", 0)),
                         choice.get("finish_reason") or "stop")
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ClientError(f"unexpected reply: {response.text[:300]}") from e


class LocalEngineClient:
    """vllm.LLM driven from one thread; requests queued meanwhile are batched together."""

    def __init__(self, cfg: ClientConfig):
        from vllm import LLM

        self.cfg = cfg
        self._llm = LLM(model=cfg.model, **cfg.engine_kwargs)
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="local-engine", daemon=True)
        self._thread.start()

    def submit(self, request: ChatRequest) -> Future:
        future: Future = Future()
        self._queue.put((request, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get())
            stop = None in batch
            batch = [item for item in batch if item is not None]
            if batch:
                self._generate(batch)
            if stop:
                return

    def _generate(self, batch: list[tuple[ChatRequest, Future]]) -> None:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = [SamplingParams(
            max_tokens=r.max_tokens, temperature=self.cfg.temperature or 0.0,
            structured_outputs=(StructuredOutputsParams(json=r.json_schema)
                                if r.json_schema is not None
                                and self.cfg.structured_outputs != "none" else None))
            for r, _ in batch]
        try:
            outputs = self._llm.chat([r.messages for r, _ in batch], params, use_tqdm=False,
                                     chat_template_kwargs=self.cfg.chat_template_kwargs or None)
        except Exception as e:  # noqa: BLE001 - one bad batch fails its requests, not the run
            for _, future in batch:
                future.set_exception(ClientError(f"local engine: {type(e).__name__}: {e}"))
            return
        for (_, future), out in zip(batch, outputs):
            completion = out.outputs[0]
            future.set_result(ChatReply(completion.text, len(out.prompt_token_ids),
                                        len(completion.token_ids),
                                        completion.finish_reason or "stop"))
