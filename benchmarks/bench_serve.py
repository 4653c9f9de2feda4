"""Throughput of `mathdistill serve`, in one run: dynamic batching on versus off (default), or, with
``--engines``, its engine against transformers' own continuous batching and plain batched ``generate``.

Default (``--mode http``):

SmolLM2-135M-Instruct (the default student, fp32, CPU) behind the real HTTP server; the official `openai`
async client keeps C requests in flight (closed loop) for C = 1, 8, 32. "off" is the same server with
``max_batch_size=1`` (one request per forward pass, one after another); "on" is ``max_batch_size=32``.
Each request asks for exactly ``--max-tokens`` tokens (``ignore_eos``) of greedy output, so both modes do
the same work; short outputs keep the wall time to a few minutes on 2 cores.

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_serve.py

Prints requests/s and output tokens/s per mode and concurrency, and the on/off ratio (goal: >= 3x at 32).

``--engines``: the same N prompts (chat-templated GSM8K questions), exactly ``--max-tokens`` greedy tokens each
(EOS ignored), through (1) serve's engine (all N submitted at once, ``max_batch_size`` = ``--batch``), (2)
transformers' continuous batching (``model.generate_batch``, paged KV cache; its manager's setup is timed
apart from generation) and (3) ``model.generate`` on left-padded batches of ``--batch``. Prints output
tokens/s of each and the ratios to the engine:

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_serve.py --engines

``--llamacpp``: ``serve --engine llamacpp`` against the transformers engine in the same run, both behind the real
HTTP server on the same model (default: the base GGUF, which transformers runs dequantized to fp32 and llama.cpp
as the file is), C = 1 and 4 clients in a closed loop, 128-token greedy answers (``ignore_eos``). Both engines get
the same ``--threads`` (default: the idle cores at start, :func:`mathdistill.llamacpp.default_threads`; printed).
Prints requests/s and output tokens/s per engine and concurrency, and the llama.cpp / transformers ratio
(goal: >= 2x requests/s):

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_serve.py --llamacpp --threads 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # ServerThread: a test helper

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


def _prompts(tok, n: int) -> list[list[int]]:
    from mathdistill.prompts import EN_PROMPT, messages

    texts = [tok.apply_chat_template(messages(EN_PROMPT, QUESTIONS[i % len(QUESTIONS)]), add_generation_prompt=True,
                                     tokenize=False) for i in range(n)]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def run_engine(model, tok, prompts: list[list[int]], max_tokens: int, batch: int, threads: int | None) -> dict:
    """serve's engine without HTTP: every prompt submitted at once, greedy, exactly ``max_tokens`` each."""
    from mathdistill.serve import Engine, ServeConfig
    from mathdistill.serve.batcher import Job
    from mathdistill.serve.protocol import Sampling

    engine = Engine(model, tok, ServeConfig(max_batch_size=batch, max_queue=len(prompts), batch_wait_ms=50, threads=threads))

    async def go() -> int:
        jobs = [Job(p, Sampling(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)) for p in prompts]
        for j in jobs:
            engine.submit(j)
        tokens = 0
        for j in jobs:
            while (ev := await j.events.get())[0] != "done":
                if ev[0] == "error":
                    raise RuntimeError(ev[1])
            tokens += ev[3]
        return tokens

    engine.start()
    try:
        t0 = time.perf_counter()
        tokens = asyncio.run(go())
        wall = time.perf_counter() - t0
    finally:
        engine.stop()
    return {"tokens": tokens, "wall_s": round(wall, 2), "gen_s": round(wall, 2), "out_tok_per_s": round(tokens / wall, 1)}


def run_generate_batch(model, tok, prompts: list[list[int]], max_tokens: int) -> dict:
    """transformers' continuous batching; ``gen_s`` spans the first request's start to the last one's end."""
    from transformers import GenerationConfig

    gc = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=-1, pad_token_id=tok.pad_token_id)
    t0 = time.perf_counter()
    out = model.generate_batch(inputs=prompts, generation_config=gc, progress_bar=False, warmup=False)
    wall = time.perf_counter() - t0
    tokens = sum(len(o.generated_tokens) for o in out.values())
    spans = [o.lifespan for o in out.values() if o.lifespan and o.lifespan[1] > 0]
    gen = max(e for _, e in spans) - min(s for s, _ in spans) if spans else wall
    return {"tokens": tokens, "wall_s": round(wall, 2), "gen_s": round(gen, 2), "out_tok_per_s": round(tokens / gen, 1),
            "out_tok_per_s_with_setup": round(tokens / wall, 1)}


def run_generate(model, tok, prompts: list[list[int]], max_tokens: int, batch: int) -> dict:
    """``model.generate`` on left-padded batches of ``batch`` prompts (every row runs to ``max_tokens``)."""
    import torch

    tok.padding_side = "left"
    tokens = 0
    t0 = time.perf_counter()
    for s in range(0, len(prompts), batch):
        enc = tok.pad({"input_ids": prompts[s: s + batch]}, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
        tokens += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "wall_s": round(wall, 2), "gen_s": round(wall, 2), "out_tok_per_s": round(tokens / wall, 1)}


def engines(args) -> None:
    import torch

    from mathdistill.models import load, resolve

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load(resolve(args.model), dtype="float32")
    prompts = _prompts(tok, args.n)
    print(f"model {args.model}, fp32 CPU, {torch.get_num_threads()} torch threads; {args.n} prompts "
          f"({min(map(len, prompts))}-{max(map(len, prompts))} tokens), {args.max_tokens} greedy output tokens each "
          f"(EOS ignored); batch {args.batch}", flush=True)
    run_generate(model, tok, prompts[:2], 2, 2)  # warm-up: first-call allocations
    res = {"serve engine": run_engine(model, tok, prompts, args.max_tokens, args.batch, args.threads)}
    print(f"serve engine: {res['serve engine']}", flush=True)
    res["transformers generate_batch"] = run_generate_batch(model, tok, prompts, args.max_tokens)
    print(f"generate_batch: {res['transformers generate_batch']}", flush=True)
    res["transformers generate (batched)"] = run_generate(model, tok, prompts, args.max_tokens, args.batch)
    print(f"generate: {res['transformers generate (batched)']}", flush=True)
    base = res["serve engine"]["out_tok_per_s"]
    print("\n| engine | output tok/s | vs serve's engine |\n| --- | --- | --- |")
    for name, r in res.items():
        print(f"| {name} | {r['out_tok_per_s']:.1f} | {r['out_tok_per_s'] / base:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": res}, f, indent=2)


def llamacpp_vs_transformers(args) -> None:
    import torch

    from server_thread import ServerThread

    from mathdistill.llamacpp import default_threads
    from mathdistill.models import load, resolve
    from mathdistill.serve import ServeConfig, create_app, llamacpp_app

    levels = [int(x) for x in args.concurrency.split(",")]
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    spec = resolve(args.model)
    limits = dict(max_batch_size=max(levels), max_queue=256, batch_wait_ms=10, threads=threads, max_prompt_tokens=512,
                  max_tokens_cap=max(args.max_tokens, 16))
    print(f"model {args.model}; {threads} threads for both engines (torch / llama.cpp); {args.max_tokens} output tokens per "
          f"request (greedy, ignore_eos); clients {levels}; {args.rounds} requests per client (>= 4 at C=1)", flush=True)
    results: dict[str, dict[int, dict]] = {}
    for engine in ("transformers", "llamacpp"):
        if engine == "llamacpp":
            app = llamacpp_app(ServeConfig(engine="llamacpp", **limits), spec, "student")
            what = f"llama.cpp on {app.state.engine.gm.path.name}"
        else:
            model, tok = load(spec, dtype="float32")
            app = create_app(model, tok, ServeConfig(**limits), name="student")
            what = "transformers fp32"
        with ServerThread(app) as s:
            asyncio.run(closed_loop(s.url, "student", 1, 1, 8))  # warm-up
            results[engine] = {}
            for c in levels:
                r = asyncio.run(closed_loop(s.url, "student", c, max(c * args.rounds, 4), args.max_tokens))
                r["max_rows"], r["steps"] = app.state.engine.stats["max_rows"], app.state.engine.stats["steps"]
                results[engine][c] = r
                print(f"{what:40}  C={c:<3} {r['req_per_s']:7.3f} req/s  {r['out_tok_per_s']:7.1f} out tok/s  "
                      f"({r['requests']} requests in {r['wall_s']} s, errors {r['errors']})", flush=True)
    print("\n| clients | transformers req/s | llama.cpp req/s | transformers out tok/s | llama.cpp out tok/s | llama.cpp / transformers |")
    print("| --- | --- | --- | --- | --- | --- |")
    ratios = {}
    for c in levels:
        t, g = results["transformers"][c], results["llamacpp"][c]
        ratios[c] = g["req_per_s"] / t["req_per_s"]
        print(f"| {c} | {t['req_per_s']:.3f} | {g['req_per_s']:.3f} | {t['out_tok_per_s']:.1f} | {g['out_tok_per_s']:.1f} | "
              f"{ratios[c]:.2f}x |")
    print(f"\nllama.cpp / transformers requests/s: {', '.join(f'C={c} {r:.2f}x' for c, r in ratios.items())} "
          f"(goal >= 2x: {'met' if min(ratios.values()) >= 2 else 'MISSED'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "threads": threads, "results": results, "ratios": ratios}, f, indent=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-tokens", type=int, default=None, help="output tokens per request (default 16; 128 with --llamacpp)")
    ap.add_argument("--rounds", type=int, default=2, help="requests per client at each concurrency (at least 4 at C=1)")
    ap.add_argument("--concurrency", default=None, help="clients in flight, comma-separated (default 1,8,32; 1,4 with --llamacpp)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both modes (default: torch's, all cores); "
                    "with --llamacpp: torch and llama.cpp threads (default: the idle cores at start)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--engines", action="store_true", help="compare the engine with transformers' generate_batch and generate")
    ap.add_argument("--llamacpp", action="store_true", help="serve --engine llamacpp against the transformers engine")
    ap.add_argument("--n", type=int, default=32, help="--engines: prompts")
    ap.add_argument("--batch", type=int, default=32, help="--engines: rows per batch (engine and generate)")
    args = ap.parse_args()
    args.max_tokens = args.max_tokens or (128 if args.llamacpp else 16)
    args.concurrency = args.concurrency or ("1,4" if args.llamacpp else "1,8,32")
    if args.engines:
        return engines(args)
    if args.llamacpp:
        return llamacpp_vs_transformers(args)

    from server_thread import ServerThread

    from mathdistill.models import load, resolve
    from mathdistill.serve import ServeConfig, create_app

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
