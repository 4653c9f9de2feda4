"""The HTTP layer: FastAPI routes over an engine (:class:`~mathdistill.serve.engine.Engine` on transformers, or
:class:`~mathdistill.serve.llamacpp_engine.LlamaCppEngine` on a GGUF; both :class:`~mathdistill.serve.batcher.Batcher` s).

Routes: ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions`` (JSON, or server-sent
events with ``stream: true``), ``GET /health``. A request is read (``max_body_bytes``), validated
(:mod:`~mathdistill.serve.protocol`), checked against the limits, queued as jobs, and answered by
:func:`respond`, the one path from engine events to a whole response or a stream, for both endpoints.

Errors use OpenAI's shape: 400 for a bad request (invalid JSON, schema, limits), 401 without the right bearer
key, 413 for a body above ``max_body_bytes``, 503 with ``Retry-After`` when the queue is full.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import Request  # module level: FastAPI resolves the handlers' annotations here

from .batcher import Batcher, Job, QueueFull
from .config import ServeConfig
from .engine import Engine
from .protocol import (APIError, ChatBody, ChatShape, CompletionBody, Sampling, SamplingBody, TextShape, dump,
                       parse_body, usage)

log = logging.getLogger(__name__)


class ClientGone(Exception):
    """The HTTP client disconnected before its answer was ready."""


def sampling_of(engine: Batcher, req: SamplingBody, prompt_len: int, max_tokens: int | None, choices: int,
                prompt_field: str = "messages") -> Sampling:
    """The engine settings of one prompt of ``req``; :class:`APIError` 400 when it breaks a limit."""
    cfg = engine.cfg
    if choices > cfg.max_n:
        raise APIError(400, f"n: {choices} choices requested, this server allows at most {cfg.max_n} per request (--max-n)", param="n")
    if prompt_len > cfg.max_prompt_tokens:
        raise APIError(400, f"the prompt has {prompt_len} tokens, above this server's limit of {cfg.max_prompt_tokens} (--max-prompt-tokens)",
                       param=prompt_field, code="context_length_exceeded")
    room = engine.context_len - prompt_len
    if max_tokens is not None:
        if max_tokens > cfg.max_tokens_cap:
            raise APIError(400, f"max_tokens: {max_tokens} is above this server's cap of {cfg.max_tokens_cap} (--max-tokens-cap)", param="max_tokens")
        if max_tokens > room:
            raise APIError(400, f"max_tokens: the prompt ({prompt_len} tokens) plus {max_tokens} completion tokens exceed the model's context of "
                                f"{engine.context_len} tokens", param="max_tokens", code="context_length_exceeded")
    elif room < 1:
        raise APIError(400, f"the prompt ({prompt_len} tokens) fills the model's context of {engine.context_len} tokens",
                       param=prompt_field, code="context_length_exceeded")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stop) > 4 or any(not s for s in stop):
        raise APIError(400, "stop: at most 4 non-empty strings", param="stop")
    return Sampling(max_tokens=max_tokens or min(cfg.default_max_tokens, cfg.max_tokens_cap, room),
                    temperature=req.temperature, top_p=req.top_p, seed=req.seed, stop=stop, n=req.n,
                    ignore_eos=req.ignore_eos)


async def read_json(request: Any, limit: int) -> Any:
    """The request body parsed as JSON, at most ``limit`` bytes (413 above, 400 when not JSON)."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise APIError(413, f"request body of {size} bytes is above this server's limit of {limit} bytes (--max-body-bytes)",
                       code="request_too_large")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise APIError(413, f"request body is above this server's limit of {limit} bytes (--max-body-bytes)",
                           code="request_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and ints longer than Python parses
        raise APIError(400, f"the request body is not valid JSON: {str(e)[:200]}") from None
    except RecursionError:
        raise APIError(400, "the request body is not valid JSON: nested too deeply") from None


async def _wait_disconnect(request: Any) -> None:
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


async def events(jobs: list[Job], request: Any) -> AsyncIterator[tuple[int, tuple]]:
    """(choice index, event) as they come, until every row of every job is done; job ``k``'s row ``i`` is choice
    ``k * n + i``. A disconnect of ``request`` (None: not watched) raises :class:`ClientGone`; either way, rows
    still running when this ends are cancelled."""
    left = sum(j.sampling.n for j in jobs)
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(k: int, job: Job) -> None:
        while True:
            ev = await job.events.get()
            await queue.put((k * job.sampling.n, ev))

    pumps = [asyncio.create_task(pump(k, j)) for k, j in enumerate(jobs)]
    gone = asyncio.create_task(_wait_disconnect(request)) if request is not None else None
    try:
        while left:
            get = asyncio.create_task(queue.get())
            waits = {get, gone} if gone else {get}
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                raise ClientGone()
            base, ev = get.result()
            if ev[0] == "error":
                raise APIError(500, ev[1], type="server_error", code="generation_failed")
            if ev[0] == "done":
                left -= 1
            yield base + ev[1], ev
    finally:
        for t in pumps + ([gone] if gone else []):
            t.cancel()
        if left:  # the client went away (or a job failed): stop what still runs
            for j in jobs:
                j.cancel()


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def respond(jobs: list[Job], request: Any, shape: ChatShape, stream: bool, prompt_tokens: int, include_usage: bool):
    """The answer to ``jobs`` in ``shape``: server-sent chunks ending in ``[DONE]`` when ``stream``, else the
    whole response; both read the same engine events."""
    from fastapi.responses import Response, StreamingResponse

    choices = sum(j.sampling.n for j in jobs)
    if stream:
        async def sse() -> AsyncIterator[str]:
            for chunk in shape.opening(choices):
                yield _sse(dump(chunk))
            completion = 0
            try:
                async for i, ev in events(jobs, None):  # a disconnect ends this generator: events() cancels the jobs
                    if ev[0] == "delta":
                        yield _sse(dump(shape.delta(i, ev[2])))
                    else:
                        completion += ev[3]
                        yield _sse(dump(shape.finish(i, ev[2])))
            except APIError as e:
                yield _sse(e.body())
                return
            if include_usage:
                yield _sse(dump(shape.usage_chunk(usage(prompt_tokens, completion))))
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    texts, reasons, completion = [""] * choices, ["stop"] * choices, 0
    try:
        async for i, ev in events(jobs, request):
            if ev[0] == "delta":
                texts[i] += ev[2]
            else:
                reasons[i] = ev[2]
                completion += ev[3]
    except ClientGone:
        return Response(status_code=499)  # nobody reads this
    return dump(shape.whole(texts, reasons, usage(prompt_tokens, completion)))


def create_app(model: Any, tok: Any, cfg: ServeConfig, name: str = "student", api_key: str | None = None):
    """The FastAPI app serving a transformers ``model``; ``app.state.engine`` is its :class:`Engine` (started
    with the app)."""
    return app_for(Engine(model, tok, cfg), name=name, api_key=api_key)


def app_for(engine: Batcher, name: str = "student", api_key: str | None = None):
    """The FastAPI app in front of ``engine`` (any :class:`~mathdistill.serve.batcher.Batcher`: transformers'
    :class:`Engine` or :class:`~mathdistill.serve.llamacpp_engine.LlamaCppEngine`), started and stopped with the app;
    ``app.state.engine`` is ``engine``."""
    from fastapi import Depends, FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from openai.types import Model
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .. import __version__

    cfg = engine.cfg
    created = int(time.time())
    fingerprint = f"mathdistill-{__version__}"
    key = api_key.encode() if api_key else None

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    async def auth(request: Request) -> None:
        if key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key)):
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="mathdistill serve", version=__version__, lifespan=lifespan, dependencies=[Depends(auth)],
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse(APIError(e.status_code, str(e.detail), code=str(e.status_code)).body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        return JSONResponse(APIError(400, str(e.errors()[:1])).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        log.exception("internal error")
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}", type="server_error").body(), status_code=500)

    def submit(jobs: list[Job]) -> None:
        try:
            for j in jobs:
                engine.submit(j)
        except QueueFull as e:
            for j in jobs:
                j.cancel()
            raise APIError(503, f"server busy: {e}; retry later", type="server_error", code="queue_full",
                           headers={"Retry-After": str(cfg.retry_after_s)}) from None

    def shape(kind: type[ChatShape], req: SamplingBody) -> ChatShape:
        return kind(f"{kind.prefix}-{uuid.uuid4().hex[:24]}", int(time.time()), name, fingerprint, req.include_usage)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, **engine.load(), "max_batch_size": cfg.max_batch_size, "max_queue": cfg.max_queue,
                "stats": dict(engine.stats)}

    @app.get("/v1/models")
    async def models():
        m = Model(id=name, object="model", created=created, owned_by="mathdistill", max_model_len=engine.context_len)
        return {"object": "list", "data": [dump(m)]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req: ChatBody = parse_body(ChatBody, await read_json(request, cfg.max_body_bytes))
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        try:  # off the event loop: a long prompt takes a while to render and tokenize
            prompt = await asyncio.to_thread(engine.render_chat, msgs)
        except Exception as e:  # noqa: BLE001 - a template that rejects the conversation (role order ...)
            raise APIError(400, f"messages: the model's chat template rejected them: {str(e)[:200]}", param="messages") from None
        ids = await asyncio.to_thread(engine.encode, prompt, False)
        job = Job(ids, sampling_of(engine, req, len(ids), req.max_completion_tokens or req.max_tokens, req.n), stream=req.stream)
        submit([job])
        return await respond([job], request, shape(ChatShape, req), req.stream, len(ids), req.include_usage)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req: CompletionBody = parse_body(CompletionBody, await read_json(request, cfg.max_body_bytes))
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise APIError(400, "prompt: empty list", param="prompt")
        encoded = [await asyncio.to_thread(engine.encode, p, True) for p in prompts]
        if not all(encoded):
            raise APIError(400, "prompt: an empty prompt", param="prompt")
        jobs = [Job(ids, sampling_of(engine, req, len(ids), req.max_tokens, req.n * len(prompts), "prompt"), stream=req.stream)
                for ids in encoded]
        submit(jobs)
        return await respond(jobs, request, shape(TextShape, req), req.stream, sum(map(len, encoded)), req.include_usage)

    return app
