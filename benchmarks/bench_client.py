"""The endpoint client's transport, old vs new: raw httpcore pools (one per worker, the client before issue 17)
vs one ``httpx.AsyncClient`` with a connection per call in flight (now, client/transport.py), both through
``run_requests`` with its cache, at teacher-like latency.

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_client.py

The old client is loaded from git (``git show REV:src/mathdistill/client.py``) as a module beside the new
package, so both run the same cache, buckets and retries against the same server process
(tests/fake_openai.py ``--delay``), interleaved run by run. A teacher call takes 0.5-5 s: at 0.5 s the
ideal rate is concurrency / 0.5 requests/s, and what matters is how close each client gets to it; the
0-latency row is the transport's ceiling on this machine, not a teacher's case.

Measured 2026-11-30 (2 shared cores, under other jobs' load; best of 3 interleaved runs, req/s):
  latency 0.5 s, concurrency 64 (ideal 128):   old 110 (106, 110, 92)   new 94 (94, 90, 81)     new/old 0.85
  latency 0.5 s, concurrency 256 (ideal 512):  old 235 (235, 235, 199)  new 206 (190, 206, 151)  new/old 0.88
  latency 0 s, concurrency 64 (ceiling):       old 726 (314, 707, 726)  new 499 (225, 439, 499)  new/old 0.69
Before client/transport.py (httpx's default pool of ``concurrency`` connections) the same runs gave new/old
0.27 and 0.12 at 0.5 s (24 vs 90 and 22 vs 183 req/s): httpcore 1.0's shared pool rescans every
connection per queued request and hands one idle connection to several requests, which then reconnect
(73-111 connections for 48-64 calls in flight). With a connection per call in flight what is left is
httpx's own per-request Python cost (Request/Response objects, anyio), visible when the 2 cores are the
limit: at 0 latency and at 256 in flight, where client and server share the cores.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
OLD_REV = "1b397d1"  # the last commit with client.py on raw httpcore


def start_server(delay: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--delay", str(delay)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{line.split()[1]}/v1"


def old_client(tmp: Path):
    """The httpcore client of ``OLD_REV`` as ``mathdistill._client_httpcore`` (its relative imports resolve
    to today's ``mathdistill.cache``, ``config``, ``errors``, ``progress``)."""
    import mathdistill

    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_REV}:src/mathdistill/client.py"], check=True,
                         capture_output=True, text=True).stdout
    path = tmp / "client_httpcore.py"
    path.write_text(src)
    name = "mathdistill._client_httpcore"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = mathdistill.__name__
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def rate(mod, base: str, n: int, conc: int, tag: str, cache: Path) -> float:
    cfg = mod.ChatClientConfig(base_url=base, model="m", concurrency=conc, max_tokens=64)
    reqs = [mod.ChatRequest([{"role": "user", "content": f"[{tag}] Tom has {i} apples and buys 7 more."}], key=str(i))
            for i in range(n)]
    stats = mod.RunStats()
    t = time.perf_counter()
    res = mod.run_requests(cfg, reqs, cache, desc=f"bench {tag}", stats=stats)
    dt = time.perf_counter() - t
    assert stats.ok == n and not any(r.error for r in res), stats.to_dict()
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="0.5:64,0.5:256,0:64", help="latency_s:concurrency, comma-separated")
    ap.add_argument("--calls-per-worker", type=int, default=4, help="requests per run = concurrency x this")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    os.environ.pop("MATHDISTILL_API_KEY", None)
    tmp = Path(tempfile.mkdtemp(prefix="bench_client_"))
    import mathdistill.client as new

    old = old_client(tmp)
    print(f"{os.cpu_count()} cores; old = {OLD_REV}:src/mathdistill/client.py (httpcore, a pool per worker), "
          f"new = mathdistill.client (one httpx.AsyncClient)", flush=True)
    rows = []
    for case in a.cases.split(","):
        delay, conc = float(case.split(":")[0]), int(case.split(":")[1])
        n = conc * (a.calls_per_worker if delay else 60)
        proc, base = start_server(delay)
        try:
            rate(old, base, min(n, 200), conc, f"warm-old{case}", tmp / f"w0{case}.sqlite")
            rate(new, base, min(n, 200), conc, f"warm-new{case}", tmp / f"w1{case}.sqlite")
            got: dict[str, list[float]] = {"old": [], "new": []}
            for rep in range(a.repeats):  # interleaved: a noisy neighbour hits both alike
                for name, mod in (("old", old), ("new", new)):
                    got[name].append(rate(mod, base, n, conc, f"{name}{rep}-{case}", tmp / f"{name}{rep}{case}.sqlite"))
        finally:
            proc.kill()
        rows.append((delay, conc, n, got))
        print(f"latency {delay:g}s, concurrency {conc}, {n} calls: old {got['old']}, new {got['new']}", flush=True)
    print(f"\n{'latency':>8} {'conc':>5} {'calls':>6} {'ideal':>7} {'old req/s (runs)':>26} {'new req/s (runs)':>26} "
          f"{'new/old':>8}")
    for delay, conc, n, got in rows:
        ideal = f"{conc / delay:.0f}" if delay else "-"
        o, w = max(got["old"]), max(got["new"])
        print(f"{delay:>7g}s {conc:>5} {n:>6} {ideal:>7} {o:>8.0f} ({', '.join(f'{x:.0f}' for x in got['old'])})"
              f"{'':>2} {w:>8.0f} ({', '.join(f'{x:.0f}' for x in got['new'])}) {w / o:>8.2f}")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
