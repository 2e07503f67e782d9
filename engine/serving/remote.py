"""Remote serving engines over HTTP(S): one row per API in `APIS` (its path, default endpoint, key
variable, and how a request body is built and an answer read), and `RemoteBackend`, which sends
`FimRequest`s to one of them through engine/serving/http_client.py (timeouts, size limits, proxies,
CAs, cancellation by closing the connection).

    mistral   Mistral's FIM API          POST /v1/fim/completions  → choices[0].message.content
    openai    OpenAI-compatible (vLLM)   POST /v1/completions + suffix → choices[0].text
    llamacpp  llama.cpp's llama-server   POST /infill              → content
    ollama    Ollama                     POST /api/generate + suffix → response

Prompts are `prefix + forced_middle` (what was typed since the anchor) and the middle comes back
after it; the request's `StopRule` is applied to the returned text (single-line requests also send
stop ["\\n"]). Token counts are estimated there (`counting.ApproxCounter`). API keys come from environment
variables and never appear in logs or error messages.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from codestral_ls.engine.errors import EngineError
from codestral_ls.engine.request import FimRequest, FimResult
from codestral_ls.engine.serving.http_client import HttpBackend, HttpSettings
from codestral_ls.engine.serving.urls import is_loopback, origin_of, url_problem


class RemoteSettings(HttpSettings, Protocol):
    """What a remote backend reads of the options (server/options.py `Options` has these fields)."""

    endpoint: str
    api_key_env: str
    remote_model: str
    allow_plain_http_key: bool
    ca_bundle: str
    request_timeout_ms: int


def _stops(req: FimRequest) -> list[str]:
    return (["\n"] if req.stop.single_line else []) + list(req.stop.stop_strings)


def _with_stop(body: dict[str, Any], stops: list[str]) -> dict[str, Any]:
    if stops:
        body["stop"] = stops
    return body


def _mistral_body(req: FimRequest, model: str, prompt: str) -> dict[str, Any]:
    return _with_stop({"model": model, "prompt": prompt, "suffix": req.suffix, "max_tokens": req.max_tokens,
                       "temperature": 0}, _stops(req))


def _openai_body(req: FimRequest, model: str, prompt: str) -> dict[str, Any]:
    return _with_stop({"model": model, "prompt": prompt, "suffix": req.suffix, "max_tokens": req.max_tokens,
                       "temperature": 0}, _stops(req))


def _llamacpp_body(req: FimRequest, model: str, prompt: str) -> dict[str, Any]:
    body: dict[str, Any] = {"input_prefix": prompt, "input_suffix": req.suffix, "n_predict": req.max_tokens,
                            "temperature": 0, "stop": _stops(req), "cache_prompt": True}
    if req.extra_files:
        body["input_extra"] = [{"filename": name, "text": text} for name, text in req.extra_files]
    return body


def _ollama_body(req: FimRequest, model: str, prompt: str) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "suffix": req.suffix, "stream": False,
            "options": _with_stop({"num_predict": req.max_tokens, "temperature": 0}, _stops(req))}


@dataclass(frozen=True)
class _Answer:
    text: str
    length_cut: bool  # the API stopped at max_tokens
    prompt_tokens: int = 0
    decoded_tokens: int = 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _choice(data: Any) -> dict[str, Any]:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices[0]")
    return choices[0]


def _usage(data: dict[str, Any]) -> tuple[int, int]:
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))


def _mistral_answer(data: Any) -> _Answer:
    choice = _choice(data)
    content = (choice.get("message") or {}).get("content")
    if isinstance(content, list):  # content chunks: [{"type": "text", "text": ...}]
        content = "".join(c.get("text", "") for c in content if isinstance(c, dict))
    if not isinstance(content, str):
        raise ValueError("no choices[0].message.content")
    return _Answer(content, choice.get("finish_reason") == "length", *_usage(data))


def _openai_answer(data: Any) -> _Answer:
    choice = _choice(data)
    if not isinstance(choice.get("text"), str):
        raise ValueError("no choices[0].text")
    return _Answer(choice["text"], choice.get("finish_reason") == "length", *_usage(data))


def _llamacpp_answer(data: Any) -> _Answer:
    if not isinstance(data, dict) or not isinstance(data.get("content"), str):
        raise ValueError("no content")
    return _Answer(data["content"], data.get("stop_type") == "limit", _int(data.get("tokens_evaluated")),
                   _int(data.get("tokens_predicted")))


def _ollama_answer(data: Any) -> _Answer:
    if not isinstance(data, dict) or not isinstance(data.get("response"), str):
        raise ValueError("no response")
    return _Answer(data["response"], data.get("done_reason") == "length", _int(data.get("prompt_eval_count")),
                   _int(data.get("eval_count")))


@dataclass(frozen=True)
class RemoteApi:
    name: str
    path: str  # appended to the endpoint unless it already ends with it
    default_endpoint: str
    key_env: str  # default environment variable for the key
    key_required: bool
    default_model: str  # "" = remoteModel must be set
    body: Callable[[FimRequest, str, str], dict[str, Any]]  # (request, model, prompt) → JSON body
    answer: Callable[[Any], _Answer]  # JSON answer → text (ValueError when it is not the expected shape)


APIS: dict[str, RemoteApi] = {api.name: api for api in (
    RemoteApi("mistral", "/v1/fim/completions", "https://api.mistral.ai", "MISTRAL_API_KEY", True,
              "codestral-latest", _mistral_body, _mistral_answer),
    RemoteApi("openai", "/v1/completions", "http://127.0.0.1:8000", "OPENAI_API_KEY", False, "",
              _openai_body, _openai_answer),
    RemoteApi("llamacpp", "/infill", "http://127.0.0.1:8080", "LLAMA_API_KEY", False, "", _llamacpp_body,
              _llamacpp_answer),
    RemoteApi("ollama", "/api/generate", "http://127.0.0.1:11434", "OLLAMA_API_KEY", False, "codestral",
              _ollama_body, _ollama_answer),
)}


def _api_url(endpoint: str, path: str) -> str:
    base = endpoint.rstrip("/")
    if base.endswith(path):
        return base
    if path.startswith("/v1/") and base.endswith("/v1"):  # "http://host:8000/v1" as OpenAI clients write it
        return base + path[3:]
    return base + path


class RemoteBackend(HttpBackend):
    """One of `APIS` over HTTP(S); configuration problems become `load_error` (said on every request)."""

    steerable = False

    def __init__(self, api: RemoteApi, options: RemoteSettings) -> None:
        super().__init__(options)
        self.api = api
        self.label = f"{api.name} backend"
        self.url = _api_url(options.endpoint.strip() or api.default_endpoint, api.path)
        self.model = options.remote_model or api.default_model
        key_env = options.api_key_env or api.key_env
        self._secret = os.environ.get(key_env, "")
        self.total_timeout = options.request_timeout_ms / 1000 or None
        self.load_error = self._problem(key_env)
        self.loaded.set()

    def _problem(self, key_env: str) -> str | None:
        if problem := url_problem(self.url):
            return f"{self.label}: endpoint {problem}"
        if not self.model and self.api.name != "llamacpp":
            return f"{self.label} needs the served model's name: set remoteModel"
        if not self._secret and (self.api.key_required or self.options.api_key_env):
            return (f"{self.label} needs an API key: set the environment variable {key_env}"
                    + ("" if self.options.api_key_env else " (or name another one with apiKeyEnv)"))
        u = urllib.parse.urlsplit(self.url)
        if self._secret and u.scheme == "http" and not is_loopback(u.hostname or "") \
                and not self.options.allow_plain_http_key:
            return (f"{self.label}: refusing to send the API key in {key_env} over plain http to {origin_of(self.url)} "
                    f"(anyone on the way can read it): use https, or --allow-plain-http-key")
        if self.options.ca_bundle and not os.path.isfile(os.path.expanduser(self.options.ca_bundle)):
            return f"{self.label}: caBundle {self.options.ca_bundle} is not a file"
        return None

    def _call(self, req: FimRequest) -> FimResult:
        t0 = time.perf_counter()
        origin = origin_of(self.url)
        # The window sized to a cold prompt: a remote cache holds none of our spines.
        body = self.api.body(req, self.model, req.prefix[req.short_start:] + req.forced_middle)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._secret:
            headers["Authorization"] = f"Bearer {self._secret}"
        conn, resp = self._open(req, "POST", self.url, json.dumps(body).encode(), headers)
        try:
            raw = self._read(req, conn, resp, origin)
        finally:
            resp.close()
            conn.close()
        if resp.status != 200:
            hint = {401: "check the API key", 403: "check the API key",
                    429: "rate limited: try again later"}.get(resp.status, "")
            raise self._http_error(resp.status, resp.reason, raw, origin, hint)
        try:
            answer = self.api.answer(json.loads(raw))
        except ValueError as exc:
            raise EngineError(f"{self.label}: unexpected answer from {origin}: {exc}") from None
        text, why = req.stop.cut(answer.text)
        return FimResult(text=text, finish=why or ("length" if answer.length_cut else "stop"),
                         prompt_tokens=answer.prompt_tokens, decoded_tokens=answer.decoded_tokens,
                         elapsed_ms=(time.perf_counter() - t0) * 1000)
