"""Calculator-aware decoding: one student on the held-out eval set with and without ``--calculator``, in one run.

Both sides use the same loaded model object, the same problems (a seeded subset of the default preset's eval
split, or all of it), the same greedy settings and stopping rule as ``mathdistill eval``; the only difference
is the calculator. Prints, for both: step accuracy (share of ``a op b = c`` steps that hold), AS overall and
per family, tokens/s, and the ratios. Goals: step accuracy >= 95 % with the calculator; its throughput
>= 80 % of without. The sides run off, on, on, off (ABBA) when ``--repeats 2``, to cancel drift in a shared machine.

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_calculator.py            # trains a smoke student first
    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_calculator.py --model runs/demo   # a run's student
    python benchmarks/bench_calculator.py --model smollm2-135m --n 24                   # the base model, quicker

The student: ``--model`` (a run folder, exported folder, alias ...); without it, a small student is trained
first with ``mathdistill run --preset smoke`` (about 3 minutes on 2 cores) and its folder is printed.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_STEPS = 95.0  # step accuracy with the calculator, %
GOAL_THROUGHPUT = 0.80  # tokens/s with the calculator over without


def eval_split(n: int | None, seed: int) -> list:
    """The default preset's held-out eval problems (a seeded subset of ``n`` when given)."""
    from mathdistill.config import read_preset
    from mathdistill.io import read_jsonl
    from mathdistill.problems import ProblemsConfig, problems
    from mathdistill.records import Problem

    cfg = ProblemsConfig.model_validate(read_preset("default")["problems"])
    with tempfile.TemporaryDirectory() as d:
        problems(cfg, d)
        probs = [Problem.model_validate(r) for r in read_jsonl(Path(d) / "eval.jsonl")]
    if n is None or n >= len(probs):
        return probs
    keep = sorted(random.Random(seed).sample(range(len(probs)), n))
    return [probs[i] for i in keep]


def smoke_student(out: Path) -> Path:
    """Train the smoke preset's student (the whole loop, small) into ``out``; reuse it if already there."""
    if not (out / "train" / "student.json").is_file():
        cmd = [sys.executable, "-m", "mathdistill", "run", "--preset", "smoke", "--out", str(out), "--overwrite",
               "--set", "eval_base=false"]
        print("bench_calculator: training a smoke student: " + " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="student: run folder, exported folder, alias [default: train a smoke student]")
    ap.add_argument("--smoke-dir", type=Path, default=Path(tempfile.gettempdir()) / "mathdistill-bench-calculator-smoke",
                    help="where the smoke student is trained (reused when present)")
    ap.add_argument("--n", type=int, default=48, help="held-out problems (a seeded subset of the default eval split)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="completion cap [default: EvalConfig's]")
    ap.add_argument("--batch-size", type=int, default=None, help="batch size [default: EvalConfig's]")
    ap.add_argument("--seed", type=int, default=0, help="seed of the problem subset")
    ap.add_argument("--repeats", type=int, default=1, choices=(1, 2), help="2: run off, on, on, off and average")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    a = ap.parse_args(argv)

    import torch

    from mathdistill.backends import generate_batched, render_prompt
    from mathdistill.evaluate import EvalConfig, score_outputs
    from mathdistill.models import load, resolve
    from mathdistill.scores import aggregate

    if a.threads:
        torch.set_num_threads(a.threads)
    student = a.model or str(smoke_student(a.smoke_dir))
    which = "given" if a.model else "smoke student trained here (mathdistill run --preset smoke)"
    d = EvalConfig()
    max_new, batch = a.max_new_tokens or d.max_new_tokens, a.batch_size or d.batch_size
    probs = eval_split(a.n, a.seed)
    model, tok = load(resolve(student), merge=True)
    prompts = [render_prompt(tok, p) for p in probs]
    fams: dict[str, int] = {}
    for p in probs:
        fams[p.source] = fams.get(p.source, 0) + 1
    print(f"bench_calculator: student {student} ({which}); {len(probs)} held-out problems "
          f"({', '.join(f'{k} {v}' for k, v in fams.items())}); max_new_tokens {max_new}, batch {batch}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    generate_batched(model, tok, prompts[:2], 4, 2, calculator=True, desc="warm-up")  # first-call costs, untimed

    order = [False, True] if a.repeats == 1 else [False, True, True, False]
    runs: dict[bool, list] = {False: [], True: []}
    for calc in order:
        t0 = time.perf_counter()
        gens = generate_batched(model, tok, prompts, max_new, batch, True, desc="calc on" if calc else "calc off",
                                calculator=calc)
        runs[calc].append((gens, time.perf_counter() - t0))

    res: dict = {"student": student, "student_kind": which, "problems": len(probs), "families": fams,
                 "max_new_tokens": max_new, "batch_size": batch, "threads": torch.get_num_threads(), "order": order}
    for calc in (False, True):
        gens = runs[calc][0][0]
        tokens = sum(g.tokens for g in gens)
        wall = sum(t for _, t in runs[calc])
        n_tok = tokens * len(runs[calc])
        preds = score_outputs(probs, gens)
        s = aggregate([p.model_dump() for p in preds], 0)
        res["on" if calc else "off"] = {
            "tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(n_tok / wall, 2),
            "step_accuracy": s["step_accuracy"], "AS": round(s["AS"], 2), "forced": sum(g.calculator_forced for g in gens),
            "steps_checked": sum(p.cqs.get("steps", 0) for p in preds),
            "by_family": {f: {"AS": round(b["AS"], 2), "step_accuracy": b["step_accuracy"], "n": b["n"]}
                          for f, b in s["by_family"].items()},
        }
    off, on = res["off"], res["on"]
    from mathdistill.arith import find_steps

    res["wrong_steps_with"] = [{"problem_id": p.id, "expr": st.expr, "claimed": st.claimed, "line": ln}
                               for p, g in zip(probs, runs[True][0][0]) for ln in g.output.splitlines()
                               for st in find_steps(ln) if not st.ok][:10]
    res["examples"] = [{"problem_id": p.id, "without": g0.output, "with": g1.output}  # where the calculator changed the text
                       for p, g0, g1 in zip(probs, runs[False][0][0], runs[True][0][0]) if g0.output != g1.output][:5]
    res["throughput_ratio"] = round(on["tokens_per_s"] / off["tokens_per_s"], 3)

    def pct(x):
        return "n/a" if x is None else f"{x:.1f}"

    print(f"{'':<34}{'without':>10}{'with --calculator':>20}")
    print(f"{'step accuracy %':<34}{pct(off['step_accuracy']):>10}{pct(on['step_accuracy']):>20}"
          f"   (steps checked {off['steps_checked']} / {on['steps_checked']}; results forced {on['forced']})")
    print(f"{'AS %':<34}{off['AS']:>10.1f}{on['AS']:>20.1f}")
    for f in sorted(off["by_family"]):
        bo, bn = off["by_family"][f], on["by_family"][f]
        print(f"{'  ' + f + ' AS / steps %':<34}{bo['AS']:>5.1f} / {pct(bo['step_accuracy']):<5}"
              f"{bn['AS']:>12.1f} / {pct(bn['step_accuracy']):<5}  (n {bo['n']})")
    print(f"{'tokens/s':<34}{off['tokens_per_s']:>10.1f}{on['tokens_per_s']:>20.1f}   (tokens {off['tokens']} / {on['tokens']})")
    ok_steps = on["step_accuracy"] is not None and on["step_accuracy"] >= GOAL_STEPS
    ok_tp = res["throughput_ratio"] >= GOAL_THROUGHPUT
    print(f"throughput with/without: {res['throughput_ratio']:.2f} (goal >= {GOAL_THROUGHPUT:.2f}: {'met' if ok_tp else 'MISSED'}); "
          f"step accuracy with: {pct(on['step_accuracy'])}% (goal >= {GOAL_STEPS:.0f}%: {'met' if ok_steps else 'MISSED'})")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
