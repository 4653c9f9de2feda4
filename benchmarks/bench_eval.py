"""Eval throughput: the transformers backend (batched, grouped by prompt length, left padding, KV cache,
per-sequence answer stop) against naive ``model.generate`` one prompt at a time, in one run.

Both sides load nothing twice: the same model object, the same 64 held-out problems (a fixed, seeded subset of
the default ``mathdistill problems`` eval split), the same greedy settings and the same stopping rule
(EOS, or the final answer complete), so they must write the same answers; the only difference is how the
prompts go through the model. ``max_new_tokens`` is capped (128 by default) to keep the wall time to a few
minutes on 2 CPU cores: the naive side is the slow one.

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_eval.py            # SmolLM2-135M, 64 problems
    python benchmarks/bench_eval.py --model PATH --n 16 --max-new-tokens 32      # quicker, any model

Prints tokens/s of both, the ratio, and whether every extracted answer (and every output) is identical.

``--llamacpp`` (llama-cpp-python installed) adds llama.cpp (:mod:`mathdistill.llamacpp`, ``batch_size``
sequences through the batch API) on the student's base GGUF (when it has one) and on its f16 / q8_0 / q4_0
exports, on the same problems: tokens/s and AS per format against the transformers batched backend, answers
compared one by one. Goal: >= 1.0x its tokens/s at the same AS (within one problem) for f16 and q8_0.

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_eval.py --llamacpp --no-naive
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

GOAL = 3.0  # required tokens/s ratio, batched over naive
LLAMACPP_GOAL = 1.0  # required tokens/s ratio, llama.cpp (f16, q8_0) over the transformers batched backend


def eval_subset(n: int, seed: int) -> list:
    from mathdistill.problems import ProblemsConfig, problems
    from mathdistill.records import Problem
    from mathdistill.io import read_jsonl

    with tempfile.TemporaryDirectory() as d:
        problems(ProblemsConfig(), d)
        probs = [Problem.model_validate(r) for r in read_jsonl(Path(d) / "eval.jsonl")]
    if n >= len(probs):
        return probs
    keep = sorted(random.Random(seed).sample(range(len(probs)), n))
    return [probs[i] for i in keep]


def naive(model, tok, prompts: list[str], max_new_tokens: int, stop_at_answer: bool):
    """One prompt at a time through plain ``model.generate`` (same stopping rule); (outputs, tokens)."""
    import torch
    from transformers import StoppingCriteriaList

    from mathdistill.backends import AnswerStop, eos_ids_of, finish_row

    eos = eos_ids_of(model, tok)
    outs, toks = [], []
    for p in prompts:
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        n = enc["input_ids"].shape[1]
        stop = AnswerStop(tok, n, [max_new_tokens], stop_at_answer)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                 pad_token_id=tok.pad_token_id, eos_token_id=sorted(eos),
                                 stopping_criteria=StoppingCriteriaList([stop]), temperature=None, top_p=None, top_k=None)
        row = out[0, n:].tolist()
        k, _ = finish_row(row, eos, stop.done_at[0], stop.why[0], max_new_tokens)
        outs.append(tok.decode(row[:k], skip_special_tokens=True))
        toks.append(k)
    return outs, toks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="model spec (alias, folder, .gguf)")
    ap.add_argument("--n", type=int, default=64, help="held-out problems")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="completion cap (keeps the naive side to minutes)")
    ap.add_argument("--batch-size", type=int, default=None, help="batched side's batch size [default: EvalConfig's]")
    ap.add_argument("--seed", type=int, default=0, help="seed of the 64-problem subset")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--no-stop-at-answer", action="store_true", help="both sides stop at EOS only")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    ap.add_argument("--llamacpp", action="store_true", help="add llama.cpp on the base GGUF and f16/q8_0/q4_0 exports")
    ap.add_argument("--gguf-types", default="f16,q8_0,q4_0", help="export types run on llama.cpp (comma-separated)")
    ap.add_argument("--no-naive", action="store_true", help="skip the one-prompt-at-a-time side (its ratio is not printed)")
    a = ap.parse_args(argv)

    import torch

    from mathdistill.answers import extract_answer
    from mathdistill.backends import generate_batched, render_prompt
    from mathdistill.evaluate import EvalConfig
    from mathdistill.models import load, resolve

    if a.threads:
        torch.set_num_threads(a.threads)
    batch_size = a.batch_size or EvalConfig().batch_size
    stop = not a.no_stop_at_answer
    probs = eval_subset(a.n, a.seed)
    model, tok = load(resolve(a.model))
    prompts = [render_prompt(tok, p) for p in probs]
    plens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    fams = {}
    for p in probs:
        fams[p.source] = fams.get(p.source, 0) + 1
    print(f"bench_eval: {a.model}, {len(probs)} problems ({', '.join(f'{k} {v}' for k, v in fams.items())}), prompts "
          f"{min(plens)}-{max(plens)} tokens, max_new_tokens {a.max_new_tokens}, batch {batch_size}, "
          f"stop_at_answer {stop}, torch threads {torch.get_num_threads()}", flush=True)
    naive(model, tok, prompts[:1], 4, stop)  # warm-up (first-call allocations), not timed

    t0 = time.perf_counter()
    gens = generate_batched(model, tok, prompts, a.max_new_tokens, batch_size, stop)
    t_batched = time.perf_counter() - t0
    b_tok = sum(g.tokens for g in gens)
    b_tps = b_tok / t_batched
    print(f"batched transformers backend:  {b_tok} tokens in {t_batched:7.1f} s = {b_tps:6.1f} tokens/s", flush=True)
    res_llama = llamacpp_rows(a, probs, gens, b_tps, batch_size, stop) if a.llamacpp else None
    if a.no_naive:
        if a.json:
            a.json.write_text(json.dumps({"model": a.model, "problems": len(probs), "max_new_tokens": a.max_new_tokens,
                                          "batch_size": batch_size, "stop_at_answer": stop,
                                          "batched": {"wall_s": round(t_batched, 2), "tokens": b_tok,
                                                      "tokens_per_s": round(b_tps, 2)}, "llamacpp": res_llama}, indent=2))
        return 0 if res_llama is None or res_llama["goal_met"] else 1
    t0 = time.perf_counter()
    n_out, n_tok = naive(model, tok, prompts, a.max_new_tokens, stop)
    t_naive = time.perf_counter() - t0

    nv_tok = sum(n_tok)
    same_answers = [extract_answer(g.output) == extract_answer(o) for g, o in zip(gens, n_out)]
    same_text = [g.output == o for g, o in zip(gens, n_out)]
    same_tokens = [g.tokens == k for g, k in zip(gens, n_tok)]
    n_tps = nv_tok / t_naive
    ratio = b_tps / n_tps
    res = {"model": a.model, "problems": len(probs), "max_new_tokens": a.max_new_tokens, "batch_size": batch_size,
           "stop_at_answer": stop, "threads": torch.get_num_threads(),
           "batched": {"wall_s": round(t_batched, 2), "tokens": b_tok, "tokens_per_s": round(b_tps, 2)},
           "naive": {"wall_s": round(t_naive, 2), "tokens": nv_tok, "tokens_per_s": round(n_tps, 2)},
           "ratio_tokens_per_s": round(ratio, 2), "ratio_wall": round(t_naive / t_batched, 2),
           "same_extracted_answers": sum(same_answers), "same_outputs": sum(same_text), "same_token_counts": sum(same_tokens),
           "differing_problems": [p.id for p, s in zip(probs, same_answers) if not s],
           "hit_max_new_tokens": sum(g.finish_reason == "length" for g in gens), "llamacpp": res_llama}
    print(f"naive   model.generate x{len(probs)}: {nv_tok} tokens in {t_naive:7.1f} s = {n_tps:6.1f} tokens/s")
    print(f"ratio: {ratio:.2f}x tokens/s ({t_naive / t_batched:.2f}x wall); goal >= {GOAL}x: {'met' if ratio >= GOAL else 'MISSED'}")
    print(f"same extracted answer on {sum(same_answers)}/{len(probs)} problems, same output text on {sum(same_text)}/{len(probs)}, "
          f"same token count on {sum(same_tokens)}/{len(probs)}; {res['hit_max_new_tokens']} hit max_new_tokens")
    for p, g, o in zip(probs, gens, n_out):
        if extract_answer(g.output) != extract_answer(o):
            print(f"  differs: {p.id}: batched {extract_answer(g.output)!r} vs naive {extract_answer(o)!r}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return 0 if all(same_answers) else 1


def llamacpp_rows(a, probs, ref, ref_tps: float, parallel: int, stop: bool) -> dict:
    """llama.cpp on the base GGUF (when the student has one) and on f16/q8_0/q4_0 exports of the student; each
    against the transformers backend's generations ``ref`` (tokens/s ratio, AS, answers one by one)."""
    from mathdistill.answers import extract_answer
    from mathdistill.evaluate import score_outputs
    from mathdistill.export import ExportConfig, export
    from mathdistill.llamacpp import GGUFModel, default_threads, generate_parallel
    from mathdistill.models import resolve

    spec = resolve(a.model)
    files: list[tuple[str, Path]] = []
    if spec.kind == "gguf":
        files.append((f"base GGUF ({spec.gguf_file})", Path(spec.path) / str(spec.gguf_file)))
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-gguf-"))
    for t in a.gguf_types.split(","):
        export(ExportConfig(format="gguf", gguf_type=t), a.model, tmp / t)
        files.append((f"export {t}", tmp / t / f"model-{t}.gguf"))
    ref_ok = [x.correct for x in score_outputs(probs, ref)]  # graded as eval grades (AS)
    rows = []
    print("\n| backend / file | MB | tokens | tokens/s | vs transformers | AS | same answers | same text |", flush=True)
    print("|---|---|---|---|---|---|---|---|")
    print(f"| transformers (fp32, batch {parallel}) | - | {sum(g.tokens for g in ref)} | {ref_tps:.1f} | 1.00x | "
          f"{100 * sum(ref_ok) / len(probs):.1f} | - | - |", flush=True)
    for label, f in files:
        with GGUFModel(f) as gm:
            prompts = [gm.tokenize(gm.render(p)) for p in probs]
            generate_parallel(gm, prompts[:1], 4, parallel=1, stop_at_answer=stop, threads=a.threads)  # warm-up
            threads = a.threads or default_threads()  # the idle cores now, as eval picks them
            t0 = time.perf_counter()
            gens = generate_parallel(gm, prompts, a.max_new_tokens, parallel=parallel, stop_at_answer=stop, threads=threads)
            dt = time.perf_counter() - t0
        ok = [x.correct for x in score_outputs(probs, gens)]
        same = [extract_answer(g.output) == extract_answer(r.output) for g, r in zip(gens, ref)]
        r = {"label": label, "bytes": f.stat().st_size, "tokens": sum(g.tokens for g in gens), "wall_s": round(dt, 2),
             "tokens_per_s": round(sum(g.tokens for g in gens) / dt, 2), "threads": threads, "AS": round(100 * sum(ok) / len(probs), 1),
             "correct": sum(ok), "same_answers": sum(same), "same_text": sum(g.output == r.output for g, r in zip(gens, ref)),
             "differing_problems": [p.id for p, s in zip(probs, same) if not s]}
        r["ratio"] = round(r["tokens_per_s"] / ref_tps, 2)
        rows.append(r)
        print(f"| llama.cpp {label}, {threads} thread(s) | {r['bytes'] / 1e6:.1f} | {r['tokens']} | {r['tokens_per_s']:.1f} | {r['ratio']:.2f}x | "
              f"{r['AS']:.1f} | {r['same_answers']}/{len(probs)} | {r['same_text']}/{len(probs)} |", flush=True)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    gated = [r for r in rows if r["label"] in ("export f16", "export q8_0")]
    met = all(r["ratio"] >= LLAMACPP_GOAL and abs(r["correct"] - sum(ref_ok)) <= 1 for r in gated)
    print(f"llama.cpp goal (f16 and q8_0 >= {LLAMACPP_GOAL}x tokens/s, AS within one problem): {'met' if met else 'MISSED'}")
    return {"transformers": {"tokens_per_s": round(ref_tps, 2), "AS": round(100 * sum(ref_ok) / len(probs), 1),
                             "correct": sum(ref_ok)}, "rows": rows, "goal_met": met}


if __name__ == "__main__":
    sys.exit(main())
