"""Benchmark: the grader's agreement with hand-checked labels, against math-verify alone and the previous rules.

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_grader.py
    python benchmarks/bench_grader.py --data ../shared/data/math500_outputs_sample.jsonl --repeats 3

Data: real MATH-500 outputs of a long-chain reasoning model with checked labels (``output``, ``reference``,
``label``; see the data folder's PROVENANCE.md). Graders:

- ``mathdistill``: :func:`mathdistill.answers.grade` (this branch);
- ``math-verify``: ``verify(parse("$reference$"), parse(output))`` with math-verify's default extraction;
- ``previous``: the rules before issue 14 (``benchmarks/grader_before_i14.py``, a frozen copy).

Prints agreement (share of rows where the verdict equals the label), false accepts and false rejects,
checks per second (best of ``--repeats`` passes, caches cleared before each), and mathdistill's disagreements
one by one with the rule that decided. Then the same agreement on the grader's tables by kind
(``tests/test_answers_kinds.py``: hand-written rows, English and Chinese, look-alikes included), per family.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mathdistill.answers import grade  # noqa: E402

SAMPLE = Path("shared") / "data" / "math500_outputs_sample.jsonl"
# ../shared beside the checkout (or beside the folder of worktrees)
DEFAULT_DATA = next((p / SAMPLE for p in (ROOT.parent, ROOT.parent.parent) if (p / SAMPLE).is_file()), ROOT.parent / SAMPLE)


def load_previous():
    spec = importlib.util.spec_from_file_location("grader_before_i14", Path(__file__).with_name("grader_before_i14.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def mv_alone(output: str, reference: str) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(parse(f"${reference}$"), parse(output)))
    except Exception:  # noqa: BLE001 - a grader failure is a wrong verdict
        return False


def clear_caches(prev) -> None:
    import mathdistill.answers.extract as ex
    import mathdistill.answers.verdict as gr
    import mathdistill.answers.numbers as nu

    for f in (ex.as_answer, gr._canon, gr._mv_cached, nu.parse_number, prev.as_answer, prev._canon, prev._mv_cached,
              prev.parse_number):
        f.cache_clear()


def run(name: str, fn, rows: list[dict], repeats: int, prev) -> dict:
    best = float("inf")
    verdicts: list[bool] = []
    for _ in range(repeats):
        clear_caches(prev)
        t0 = time.perf_counter()
        verdicts = [fn(r["output"], r["reference"]) for r in rows]
        best = min(best, time.perf_counter() - t0)
    agree = sum(v == r["label"] for v, r in zip(verdicts, rows))
    fa = sum(v and not r["label"] for v, r in zip(verdicts, rows))
    fr = sum(r["label"] and not v for v, r in zip(verdicts, rows))
    return {"grader": name, "agree": agree, "n": len(rows), "pct": 100 * agree / len(rows), "false_accepts": fa,
            "false_rejects": fr, "checks_per_s": len(rows) / best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="JSONL with output, reference, label")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per grader (best is kept)")
    args = ap.parse_args()
    rows = [json.loads(line) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line.strip()]
    prev = load_previous()
    mv_alone("$1$", "1"), grade(r"\boxed{\sqrt{2}}", r"\sqrt2"), prev.is_correct(r"\boxed{\sqrt{2}}", r"\sqrt2")  # imports
    results = [
        run("mathdistill", lambda o, r: grade(o, r).correct, rows, args.repeats, prev),
        run("math-verify alone", mv_alone, rows, args.repeats, prev),
        run("previous rules", prev.is_correct, rows, args.repeats, prev),
    ]
    print(f"{len(rows)} labelled outputs ({sum(r['label'] for r in rows)} correct) from {args.data}")
    print(f"{'grader':<20} {'agreement':>16} {'false acc.':>10} {'false rej.':>10} {'checks/s':>10}")
    for x in results:
        print(f"{x['grader']:<20} {x['agree']:>4}/{x['n']:<4} {x['pct']:6.1f} % {x['false_accepts']:>10} "
              f"{x['false_rejects']:>10} {x['checks_per_s']:>10.0f}")
    base = results[0]["checks_per_s"]
    print("checks/s relative to mathdistill: " + ", ".join(f"{x['grader']} {x['checks_per_s'] / base:.2f}x" for x in results[1:]))
    rules: dict[str, int] = {}
    for r in rows:
        g = grade(r["output"], r["reference"])
        rules[g.rule] = rules.get(g.rule, 0) + 1
        if g.correct != r["label"]:
            print(f"  disagrees: {r.get('id')}: label {r['label']}, read {g.answer!r} vs {r['reference']!r} ({g.rule})")
    print("verdicts per rule: " + ", ".join(f"{k} {v}" for k, v in sorted(rules.items(), key=lambda kv: -kv[1])))
    tables(prev)


def tables(prev) -> None:
    """Agreement of the three graders with the rows of tests/test_answers_kinds.py, per family."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_answers_kinds import FAMILIES

    graders = {"mathdistill": lambda o, r: grade(o, r).correct, "math-verify alone": mv_alone,
               "previous rules": prev.is_correct}
    total = dict.fromkeys(graders, 0)
    n = 0
    print(f"\ntables by kind ({sum(len(v) for v in FAMILIES.values())} rows): agreement per family")
    print(f"{'family':<14} " + " ".join(f"{g:>18}" for g in graders))
    for fam, rows in FAMILIES.items():
        got = {g: sum(f(o, r) == e for o, r, e in rows) for g, f in graders.items()}
        n += len(rows)
        for g in graders:
            total[g] += got[g]
        print(f"{fam:<14} " + " ".join(f"{got[g]:>13}/{len(rows):<4}" for g in graders))
    print(f"{'all':<14} " + " ".join(f"{total[g]:>8}/{n} {100 * total[g] / n:5.1f}%" for g in graders))


if __name__ == "__main__":
    main()
