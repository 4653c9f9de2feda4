"""Throughput of `mathdistill serve` with dynamic batching on versus off, in one run.

SmolLM2-135M-Instruct (the default student, fp32, CPU) behind the real HTTP server; the official `openai`
async client keeps C requests in flight (closed loop) for C = 1, 8, 32. "off" is the same server with
``max_batch_size=1`` (one request per forward pass, one after another); "on" is ``max_batch_size=32``.
Each request asks for exactly ``--max-tokens`` tokens (``ignore_eos``) of greedy output, so both modes do
the same work; short outputs keep the wall time to a few minutes on 2 cores.

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_serve.py

Prints requests/s and output tokens/s per mode and concurrency, and the on/off ratio (goal: >= 3x at 32).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did she sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. How much more money does Betty need?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    "Calculate ( 56 + -33 ) - 84.",
    "John has 35 apples. He buys 93 more. How many apples does he have?",
]


async def closed_loop(url: str, model: str, concurrency: int, total: int, max_tokens: int) -> dict:
    import openai

    from mathdistill.prompts import EN_PROMPT, messages

    c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    todo = list(range(total))
    tokens = errors = 0

    async def client() -> None:
        nonlocal tokens, errors
        while todo:
            i = todo.pop()
            try:
                r = await c.chat.completions.create(model=model, messages=messages(EN_PROMPT, QUESTIONS[i % len(QUESTIONS)]),
                                                    max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True})
                tokens += r.usage.completion_tokens
            except openai.APIError:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    await c.close()
    return {"requests": total, "errors": errors, "wall_s": round(wall, 2), "req_per_s": round(total / wall, 3),
            "out_tok_per_s": round(tokens / wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-tokens", type=int, default=16, help="output tokens per request")
    ap.add_argument("--rounds", type=int, default=2, help="requests per client at each concurrency (at least 4 at C=1)")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both modes (default: torch's, all cores)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()

    from mathdistill.models import load, resolve
    from mathdistill.serve import ServeConfig, ServerThread, create_app

    levels = [int(x) for x in args.concurrency.split(",")]
    spec = resolve(args.model)
    model, tok = load(spec, dtype="float32")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"model {args.model}, fp32 CPU, {torch.get_num_threads()} torch threads; {args.max_tokens} output tokens per request (greedy, ignore_eos); "
          f"concurrency {levels}; {args.rounds} requests per client (>= 4 at C=1)", flush=True)
    results: dict[str, dict[int, dict]] = {}
    for mode, batch in (("off", 1), ("on", 32)):
        app = create_app(model, tok, ServeConfig(max_batch_size=batch, max_queue=256, batch_wait_ms=10, threads=args.threads), name="student")
        with ServerThread(app) as s:
            asyncio.run(closed_loop(s.url, "student", 1, 1, args.max_tokens))  # warm-up
            results[mode] = {}
            for c in levels:
                r = asyncio.run(closed_loop(s.url, "student", c, max(c * args.rounds, 4), args.max_tokens))
                st = app.state.engine.stats
                r["max_rows"], r["steps"], r["prefills"] = st["max_rows"], st["steps"], st["prefills"]
                results[mode][c] = r
                print(f"batching {mode:3}  C={c:<3} {r['req_per_s']:7.2f} req/s  {r['out_tok_per_s']:7.1f} out tok/s  "
                      f"({r['requests']} requests in {r['wall_s']} s, errors {r['errors']})", flush=True)
    print("\n| concurrency | off req/s | on req/s | off out tok/s | on out tok/s | on/off |")
    print("| --- | --- | --- | --- | --- | --- |")
    for c in levels:
        off, on = results["off"][c], results["on"][c]
        print(f"| {c} | {off['req_per_s']:.2f} | {on['req_per_s']:.2f} | {off['out_tok_per_s']:.1f} | "
              f"{on['out_tok_per_s']:.1f} | {on['out_tok_per_s'] / off['out_tok_per_s']:.2f}x |")
    top = max(levels)
    ratio = results["on"][top]["out_tok_per_s"] / results["off"][top]["out_tok_per_s"]
    print(f"\nbatching on/off at concurrency {top}: {ratio:.2f}x (goal >= 3x: {'met' if ratio >= 3 else 'MISSED'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "ratio_at_max_concurrency": ratio}, f, indent=2)


if __name__ == "__main__":
    main()
