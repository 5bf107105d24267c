"""`POST /v1/models/<name>[/versions/N|/labels/L]:generate`: text generation for served language models.

Request (JSON): `{"prompt": "def main(", "max_new_tokens": 64, "temperature": 0.8, "top_k": 20,
"seed": 0, "stream": false}` or `"prompts": [...]` for several. Response: `{"generations": [{"prompt",
"text", "tokens"}]}` with the version headers of `:predict`. With `"stream": true` (one prompt) the
answer is server-sent events: `data: {"text": "<new text>"}` per token, then
`data: {"done": true, "tokens": N}`.

Concurrent non-streaming requests are batched: requests with the same (temperature, top_k,
max_new_tokens) that arrive within the version's batching window run as one batch (each row keeps its
own seed, so batching never changes a request's text). Streaming requests decode one token per step
in a worker thread and send each token as it is made.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gitops.errors import UsageError

MAX_PROMPTS = 64


@dataclass
class GenerateRequest:
    """One checked `:generate` request: prompts and sampling settings (see `parse_request`).

    `max_new_tokens` counts tokens, `temperature` 0 is greedy (else logits / temperature), `top_k` None samples from the
    whole vocabulary, `seed` is the first prompt's seed (prompt i uses `seed + i`).
    """

    prompts: list[str]
    max_new_tokens: int
    temperature: float
    top_k: int | None
    seed: int
    stream: bool


def parse_request(payload: Any) -> GenerateRequest:
    """A checked generation request; UsageError (answered 400) names what is wrong."""
    if not isinstance(payload, dict):
        raise UsageError('expected a JSON object like {"prompt": "text", "max_new_tokens": 64}')
    unknown = sorted(set(payload) - {"prompt", "prompts", "max_new_tokens", "temperature", "top_k", "seed", "stream"})
    if unknown:
        raise UsageError(f"unknown field(s): {', '.join(unknown)}")
    if ("prompt" in payload) == ("prompts" in payload):
        raise UsageError('give exactly one of "prompt" (a string) or "prompts" (a list of strings)')
    prompts = [payload["prompt"]] if "prompt" in payload else payload["prompts"]
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise UsageError('"prompt" must be a string ("prompts": a non-empty list of strings)')
    if len(prompts) > MAX_PROMPTS:
        raise UsageError(f"at most {MAX_PROMPTS} prompts per request")

    def number(key: str, default: Any, kind: type) -> Any:
        value = payload.get(key, default)
        if value is None and key == "top_k":
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
            raise UsageError(f'"{key}" must be {"an integer" if kind is int else "a number"}, got {value!r}')
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f'"{key}" must be finite')
        return kind(value)

    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise UsageError('"stream" must be true or false')
    if stream and len(prompts) != 1:
        raise UsageError("streaming answers one prompt per request")
    request = GenerateRequest(prompts, number("max_new_tokens", 64, int), number("temperature", 1.0, float),
                              number("top_k", None, int), number("seed", 0, int), stream)
    from gitops.learn.generate import Sampling

    Sampling(request.max_new_tokens, request.temperature, request.top_k, request.seed).check()
    return request


@dataclass
class _Pending:
    ids: list[int]
    seed: int
    future: asyncio.Future


@dataclass
class GenerationBatcher:
    """Groups concurrent requests of one version by sampling settings and runs each group as a batch."""

    max_wait_s: float = 0.005
    max_batch: int = 16
    _groups: dict[tuple, list[_Pending]] = field(default_factory=dict)
    _timers: dict[tuple, asyncio.Task] = field(default_factory=dict)

    async def submit(self, loaded: Any, ids: list[int], request: GenerateRequest, seed: int) -> list[int]:
        """Queue one prompt's token ids; returns its `max_new_tokens` new ids (the prompt excluded).

        Requests with the same version and sampling settings join one batch: it runs when `max_batch` rows
        wait or `max_wait_s` seconds after the first. A failing batch raises its error in every waiter.
        """
        loop = asyncio.get_running_loop()
        key = (id(loaded), request.max_new_tokens, request.temperature, request.top_k)
        pending = _Pending(ids, seed, loop.create_future())
        group = self._groups.setdefault(key, [])
        group.append(pending)
        if len(group) >= self.max_batch:
            self._flush(key, loaded, request)
        elif key not in self._timers:
            self._timers[key] = asyncio.create_task(self._later(key, loaded, request))
        return await pending.future

    async def _later(self, key: tuple, loaded: Any, request: GenerateRequest) -> None:
        await asyncio.sleep(self.max_wait_s)
        self._flush(key, loaded, request)

    def _flush(self, key: tuple, loaded: Any, request: GenerateRequest) -> None:
        group = self._groups.pop(key, [])
        timer = self._timers.pop(key, None)
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        if group:
            asyncio.get_running_loop().create_task(self._run(group, loaded, request))

    async def _run(self, group: list[_Pending], loaded: Any, request: GenerateRequest) -> None:
        from gitops.learn.generate import Sampling, generate_ids

        sampling = Sampling(request.max_new_tokens, request.temperature, request.top_k, 0)
        try:
            out = await asyncio.to_thread(generate_ids, loaded.model, [p.ids for p in group], sampling,
                                          seeds=[p.seed for p in group])
        except Exception as exc:  # noqa: BLE001 - each waiting request answers with the error
            for p in group:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        for p, ids in zip(group, out, strict=True):
            if not p.future.done():
                p.future.set_result(ids)


def tokenizer_of(loaded: Any) -> Any:
    """The tokenizer saved with a loaded language model (`gitops.learn.tokenize.from_saved`).

    Raises UsageError (answered 400) when the model is not a language model or saved no tokenizer.
    """
    from gitops.learn.tokenize import from_saved

    prep = loaded.preprocessing
    if prep.task != "language_modeling" or not getattr(prep, "tokenizer", None):
        raise UsageError(f"{loaded.config.name} is a {prep.task} model; :generate needs a language model (use :predict)")
    return from_saved(prep.tokenizer)


async def generate(batcher: GenerationBatcher, loaded: Any, request: GenerateRequest) -> list[dict]:
    """Every prompt's generation (batched with concurrent requests)."""
    tokenizer = tokenizer_of(loaded)
    encoded = [tokenizer.encode(p) for p in request.prompts]
    _check_prompts(loaded, encoded)
    outs = await asyncio.gather(*(batcher.submit(loaded, ids, request, request.seed + i)
                                  for i, ids in enumerate(encoded)))
    results = []
    for prompt, ids in zip(request.prompts, outs, strict=True):
        if tokenizer.eos_id is not None and tokenizer.eos_id in ids:
            ids = ids[: ids.index(tokenizer.eos_id)]
        results.append({"prompt": prompt, "text": tokenizer.decode(ids), "tokens": len(ids)})
    return results


def _check_prompts(loaded: Any, encoded: list[list[int]]) -> None:
    context = int(loaded.model.context)
    for i, ids in enumerate(encoded):
        if not ids:
            raise UsageError(f"prompt {i} is empty")
        if len(ids) > context:
            raise UsageError(f"prompt {i}: {len(ids)} tokens is longer than the model's context ({context} tokens)")


async def stream(loaded: Any, request: GenerateRequest) -> AsyncIterator[bytes]:
    """Server-sent events of one prompt's generation, one event per token as it is decoded."""
    from gitops.learn.generate import Sampling, stepper

    tokenizer = tokenizer_of(loaded)
    ids = tokenizer.encode(request.prompts[0])
    _check_prompts(loaded, [ids])
    sampling = Sampling(request.max_new_tokens, request.temperature, request.top_k, request.seed)
    steps = stepper(loaded.model, ids, sampling)
    made: list[int] = []
    shown = ""
    while True:
        token = await asyncio.to_thread(next, steps, None)
        if token is None or (tokenizer.eos_id is not None and token == tokenizer.eos_id):
            break
        made.append(token)
        text = tokenizer.decode(made)
        if text.endswith("\ufffd"):  # an unfinished UTF-8 character: wait for its other bytes
            continue
        yield f"data: {json.dumps({'text': text[len(shown):]}, allow_nan=False)}\n\n".encode()
        shown = text
    yield f"data: {json.dumps({'done': True, 'tokens': len(made)}, allow_nan=False)}\n\n".encode()
