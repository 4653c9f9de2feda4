"""Benchmark of `generate`'s teacher client against an instantly answering local server.

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_generate.py

1. Requests/s at concurrency 64 (goal >= 500 req/s on 2 cores), all measured in this run against the same
   server process (tests/fake_openai.py, no delay):
   - baseline: the openai SDK's AsyncOpenAI (max_retries=0) under a semaphore, no cache: the skeleton's client;
   - mathdistill: ``run_requests`` as ``generate`` uses it (one httpx.AsyncClient, a connection per call in
     flight: client/transport.py; a cache commit per call);
   - bare httpx loops (no parsing, no cache) over one shared 64-connection pool (httpx's default, which
     ``run_requests`` no longer uses), and over one client per worker (a pool of one each), and httpcore (httpx's transport) alone:
     the transport's ceiling. At teacher latency (0.5-5 s) see benchmarks/bench_client.py.
2. A fully cached rerun of 10,000 prompts (goal <= 5 s): the ``mathdistill generate`` command in a fresh
   process, with the server stopped (so any call would fail), against the first, uncached run.

The server runs in its own process; both share the machine's cores, as a local vLLM would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def start_server() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--reasoning", "field"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{line.split()[1]}/v1"


def messages(tag: str, i: int) -> list[dict]:
    return [{"role": "system", "content": "Please think step by step."},
            {"role": "user", "content": f"[{tag}] Tom has {i} apples and buys 7 more. How many?"}]


def bench_sdk(base: str, n: int, conc: int, tag: str) -> float:
    from openai import AsyncOpenAI

    async def run() -> None:
        client = AsyncOpenAI(base_url=base, api_key="bench", max_retries=0)
        sem = asyncio.Semaphore(conc)

        async def one(i: int) -> None:
            async with sem:
                r = await client.chat.completions.create(model="m", messages=messages(tag, i), temperature=0.6,
                                                         top_p=0.95, max_tokens=64)
                assert r.choices[0].message.content

        await asyncio.gather(*(one(i) for i in range(n)))
        await client.close()

    t = time.perf_counter()
    asyncio.run(run())
    return n / (time.perf_counter() - t)


def bench_client(base: str, n: int, conc: int, tag: str, cache: Path) -> float:
    from mathdistill.client import ChatClientConfig, ChatRequest, RunStats, run_requests

    cfg = ChatClientConfig(base_url=base, model="m", concurrency=conc, max_tokens=64)
    reqs = [ChatRequest(messages(tag, i), key=str(i)) for i in range(n)]
    stats = RunStats()
    t = time.perf_counter()
    res = run_requests(cfg, reqs, cache, desc=f"bench {tag}", stats=stats)
    dt = time.perf_counter() - t
    assert stats.ok == n and not any(r.error for r in res), stats.to_dict()
    return n / dt


def bench_httpx(base: str, n: int, conc: int, tag: str, shared_pool: bool) -> float:
    """A bare httpx loop: ``conc`` workers over one client with a pool of ``conc`` connections, or over one
    client each with a pool of one (what ``run_requests`` does)."""
    import httpx

    async def run() -> None:
        todo = list(range(n))
        size = conc if shared_pool else 1
        clients = [httpx.AsyncClient(limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                                     verify=False)
                   for _ in range(1 if shared_pool else conc)]

        async def worker(http) -> None:
            while todo:
                i = todo.pop()
                body = json.dumps({"model": "m", "messages": messages(tag, i), "max_tokens": 64}).encode()
                r = await http.post(base + "/chat/completions", content=body,
                                    headers={"content-type": "application/json"})
                assert r.status_code == 200

        await asyncio.gather(*(worker(clients[k % len(clients)]) for k in range(conc)))
        for c in clients:
            await c.aclose()

    t = time.perf_counter()
    asyncio.run(run())
    return n / (time.perf_counter() - t)


def bench_httpcore(base: str, n: int, conc: int, tag: str) -> float:
    """httpx's own transport layer (httpcore) without the httpx Client on top, a pool of one per worker."""
    import httpcore

    async def run() -> None:
        todo = list(range(n))
        pools = [httpcore.AsyncConnectionPool(max_connections=1) for _ in range(conc)]

        async def worker(pool) -> None:
            while todo:
                i = todo.pop()
                body = json.dumps({"model": "m", "messages": messages(tag, i), "max_tokens": 64}).encode()
                r = await pool.request("POST", base + "/chat/completions", content=body, headers={
                    "content-type": "application/json", "content-length": str(len(body))})
                assert r.status == 200

        await asyncio.gather(*(worker(p) for p in pools))
        for p in pools:
            await p.aclose()

    t = time.perf_counter()
    asyncio.run(run())
    return n / (time.perf_counter() - t)


def cli(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "mathdistill", *args], env=env, capture_output=True, text=True)
    return time.perf_counter() - t, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=4000, help="requests per throughput measurement")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=10_000, help="prompts in the cached-rerun measurement")
    ap.add_argument("--repeats", type=int, default=3, help="throughput runs per client (the best is reported)")
    a = ap.parse_args()
    os.environ.pop("MATHDISTILL_API_KEY", None)
    proc, base = start_server()
    tmp = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    try:
        print(f"server {base}; {a.requests} requests at concurrency {a.concurrency}; {os.cpu_count()} cores", flush=True)
        bench_sdk(base, 300, a.concurrency, "warm-sdk")  # imports, connection set-up
        bench_client(base, 300, a.concurrency, "warm-client", tmp / "warm.sqlite")
        bench_httpx(base, 300, a.concurrency, "warm-httpx", shared_pool=False)
        names = ["openai SDK (baseline)", "mathdistill run_requests", "bare httpx, shared pool", "bare httpx, pool per worker",
                 "bare httpcore, pool per worker"]
        rates: dict[str, list[float]] = {k: [] for k in names}
        for rep in range(a.repeats):  # interleaved, so a noisy neighbour hits all alike
            rates[names[0]].append(bench_sdk(base, a.requests, a.concurrency, f"sdk{rep}"))
            rates[names[1]].append(bench_client(base, a.requests, a.concurrency, f"client{rep}", tmp / f"c{rep}.sqlite"))
            rates[names[2]].append(bench_httpx(base, a.requests, a.concurrency, f"shared{rep}", shared_pool=True))
            rates[names[3]].append(bench_httpx(base, a.requests, a.concurrency, f"own{rep}", shared_pool=False))
            rates[names[4]].append(bench_httpcore(base, a.requests, a.concurrency, f"core{rep}"))
        base_rate = max(rates["openai SDK (baseline)"])
        print(f"\n{'client':30} {'req/s (best)':>12} {'all runs':>24} {'vs baseline':>12}")
        for name, rs in rates.items():
            print(f"{name:30} {max(rs):12.0f} {', '.join(f'{r:.0f}' for r in rs):>24} {max(rs) / base_rate:11.2f}x")
        ours = max(rates["mathdistill run_requests"])
        print(f"goal >= 500 req/s: {'met' if ours >= 500 else 'MISSED'} ({ours:.0f} req/s)", flush=True)

        probs = tmp / "problems.jsonl"
        probs.write_text("".join(json.dumps({"id": f"p{i}", "question": f"Tom has {i} apples and buys 7 more. "
                                             f"How many apples does Tom have?"}) + "\n" for i in range(a.prompts)))
        out = tmp / "gen"
        args = ["generate", "--problems", str(probs), "--out", str(out), "--backend", "openai", "--base-url", base,
                "--model", "m", "--concurrency", str(a.concurrency)]
        first, r = cli(args)
        assert r.returncode == 0, r.stderr[-2000:]
        proc.terminate()  # no server: a rerun that made any call would fail
        proc.wait(10)
        again, r = cli(args)
        assert r.returncode == 0, r.stderr[-2000:]
        summary = json.loads((out / "generate_summary.json").read_text())
        assert summary["calls"]["cached"] == a.prompts and summary["calls"]["calls"] == 0, summary["calls"]
        n_traces = sum(1 for _ in (out / "traces.jsonl").open())
        print(f"\n{a.prompts:,} prompts, `mathdistill generate` in a fresh process:")
        print(f"  first run (all calls):      {first:6.2f} s")
        print(f"  fully cached rerun:         {again:6.2f} s  ({first / again:.1f}x faster; 0 calls; "
              f"{n_traces:,} traces; stage itself {summary['seconds']:.2f} s)")
        print(f"goal <= 5 s: {'met' if again <= 5 else 'MISSED'} ({again:.2f} s)")
    finally:
        if proc.poll() is None:
            proc.kill()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
