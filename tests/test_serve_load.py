"""`mathdistill serve` as users run it: the CLI verb in its own process (key from the environment, 127.0.0.1)
under a burst of 200 concurrent async clients; and evaluation end to end through the shared OpenAI client."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from mathdistill.backends import generate_batched, render_prompt
from mathdistill.client import ChatClientConfig, ChatRequest, run_requests
from mathdistill.evaluate import score_outputs
from mathdistill.models import load, model_bytes, resolve
from mathdistill.prompts import instruction_for, messages
from mathdistill.records import Problem
from mathdistill.scores import aggregate
from mathdistill.serve import ServeConfig, create_app
from server_thread import ServerThread

pytestmark = pytest.mark.timeout(240)

KEY = "env-key-123"
BATCH, QUEUE = 8, 16


def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


@pytest.fixture(scope="module")
def cli_server(tiny_model, tmp_path_factory):
    """`python -m mathdistill serve` in its own process, the key in MATHDISTILL_SERVE_KEY."""
    port = _free_port()
    env = {**os.environ, "MATHDISTILL_SERVE_KEY": KEY, "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
           "MATHDISTILL_HOME": str(tmp_path_factory.mktemp("home"))}
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, "-m", "mathdistill", "serve", "--model", str(tiny_model), "--port", str(port),
                              "--max-batch-size", str(BATCH), "--max-queue", str(QUEUE), "--batch-wait-ms", "5"],
                             stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                if httpx.get(url + "/health", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if p.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.3)
        yield url, p, log
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def test_cli_serve_binds_loopback_needs_the_key_and_never_logs_it(cli_server):
    url, p, log = cli_server
    r = httpx.get(url + "/v1/models", timeout=5)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    assert c.models.list().data[0].id == "model"
    r = c.chat.completions.create(model="model", messages=[{"role": "user", "content": "1 + 1 ="}], max_tokens=3)
    assert r.usage.completion_tokens <= 3
    c.close()
    listening = [cn for cn in psutil.Process(p.pid).net_connections() if cn.status == psutil.CONN_LISTEN]
    assert listening and all(cn.laddr.ip == "127.0.0.1" for cn in listening)
    text = log.read_text()
    assert "auth on" in text and url.removeprefix("http://") in text
    assert KEY not in text, "the API key was written to the log"


def test_200_concurrent_async_requests_answer_or_503(cli_server):
    """Every request gets a well-formed completion or a well-formed 503 (Retry-After); the queue and the
    server's memory stay bounded; the burst ends in bounded time and the server drains to idle."""
    url, p, _ = cli_server
    server = psutil.Process(p.pid)
    auth = {"Authorization": f"Bearer {KEY}"}

    async def burst(n):
        c = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        try:
            async def one(i):
                try:
                    return "ok", await c.chat.completions.create(
                        model="model", messages=[{"role": "user", "content": f"{i} + {i} ="}], max_tokens=8,
                        temperature=0.8, seed=i, extra_body={"ignore_eos": True})
                except openai.APIStatusError as e:
                    return e.status_code, e
            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), timeout=150)
        finally:
            await c.close()

    asyncio.run(burst(20))  # warm up the server's allocator and threads before measuring its memory
    rejected0 = httpx.get(url + "/health", headers=auth, timeout=5).json()["stats"]["rejected"]
    rss0 = server.memory_info().rss
    t0 = time.monotonic()
    results = asyncio.run(burst(200))
    wall = time.monotonic() - t0
    rss1 = server.memory_info().rss
    assert all(kind in ("ok", 503) for kind, _ in results), [k for k, _ in results if k not in ("ok", 503)]
    ok = [r for kind, r in results if kind == "ok"]
    busy = [e for kind, e in results if kind == 503]
    for r in ok:
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8
        assert isinstance(r.choices[0].message.content, str)
    for e in busy:
        assert e.response.headers["retry-after"] == "1"
        assert e.body["code"] == "queue_full" and e.body["message"]
    assert len(ok) >= QUEUE and busy, (len(ok), len(busy))
    assert wall < 120
    assert rss1 - rss0 < 150 * 2**20, f"the server grew by {(rss1 - rss0) / 2**20:.0f} MiB over one burst"
    deadline = time.monotonic() + 10
    while (h := httpx.get(url + "/health", headers=auth, timeout=5).json())["queued"] + h["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (h["queued"], h["running"]) == (0, 0)
    assert h["stats"]["max_queued"] <= QUEUE and 1 < h["stats"]["max_rows"] <= BATCH
    assert h["stats"]["rejected"] - rejected0 == len(busy) and h["stats"]["failed"] == 0


def test_eval_through_the_server_matches_local_eval(tiny_model, monkeypatch):
    """The eval path end to end over HTTP: the shared client (as `eval --backend openai` uses it) sends every
    problem to the server with auth; outputs, token counts and scores equal local greedy generation."""
    model, tok = load(resolve(str(tiny_model)))
    probs = [Problem(id=f"q{i}", question=f"State the final answer to the following arithmetic problem: {a} + {b} =",
                     answer=str(a + b), source="chain_sum") for i, (a, b) in enumerate([(12, 35), (98, 93), (7, 6), (56, 33), (1, 2)])]
    local = score_outputs(probs, generate_batched(model, tok, [render_prompt(tok, p) for p in probs], max_new_tokens=16,
                                                  batch_size=5, stop_at_answer=False))
    monkeypatch.setenv("MATHDISTILL_API_KEY", "eval-key")
    app = create_app(model, tok, ServeConfig(batch_wait_ms=20), name="student", api_key="eval-key")
    with ServerThread(app) as s:
        cfg = ChatClientConfig(base_url=s.url + "/v1", model="student", temperature=0, max_tokens=16, concurrency=5, max_retries=0)
        res = run_requests(cfg, [ChatRequest(messages(instruction_for(p.lang), p.question), key=p.id) for p in probs], desc="eval")
    assert [r.error for r in res] == [None] * len(probs)
    assert [r.request.key for r in res] == [p.id for p in probs]
    outs = [{"output": r.content, "tokens": r.completion_tokens, "finish_reason": r.finish_reason} for r in res]
    served = score_outputs(probs, outs)
    assert [p.output for p in served] == [p.output.strip() for p in local]
    assert [(p.tokens, p.finish_reason) for p in served] == [(p.tokens, p.finish_reason) for p in local]
    size = model_bytes(resolve(str(tiny_model)))
    keys = ("AS", "CQS", "ES", "MLS", "overall", "mean_tokens", "n")
    a = aggregate([p.model_dump() for p in served], size)
    b = aggregate([p.model_dump() for p in local], size)
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
