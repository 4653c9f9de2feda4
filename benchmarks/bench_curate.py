"""Benchmark: `curate` end to end on 100,000 synthetic traces (a reference each), full recipe vs the seed recipe.

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_curate.py            # 100,000 traces
    python benchmarks/bench_curate.py --traces 4000                                 # a quick look

The traces mimic a teacher export: 4 samples per problem, English and Chinese, answers written as ``####``,
"The answer is", ``\\boxed{}``, "答案是", money and percent, full-width digits; <think> blocks (some unclosed),
wrong answers, wrong arithmetic steps, truncated and empty outputs, bad JSON lines, near-duplicate problems,
eval leaks, and a few LaTeX answers (surds) that only math-verify can decide.

Prints seconds per step, the fast-path share of answer checks, the full recipe's time as a ratio of the seed
recipe's (measured in the same run), and the grader against math-verify alone on a sample of checks.
Goal (issue 4): <= 30 s for 100,000 traces on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mathdistill.answers import is_correct  # noqa: E402
from mathdistill.curate import CurateConfig, curate  # noqa: E402

NAMES = ["Tom", "Ana", "Liam", "Mia", "Omar", "Sara", "Ken", "Zoe", "Ivan", "Lea"]
ZH_NAMES = ["小明", "小红", "小刚", "小丽", "小华"]
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
PAD = ("Let me read the problem carefully and write down what is known before computing anything. "
       "I will go step by step and check each operation once more at the end.")


def make_problem(rng: random.Random, i: int) -> tuple[dict, list[str], str]:
    """(problem, the correct steps, the answer as text)."""
    kind = rng.random()
    pid = f"b{i:06d}"
    if kind < 0.0025:  # surds: only math-verify can compare \sqrt{48} with 4\sqrt{3}
        k, m = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7])
        q = f"Simplify the square root of {k * k * m} as far as possible (case {i})."
        return {"id": pid, "question": q, "answer": f"{k}\\sqrt{{{m}}}", "source": "surd"}, \
            [f"{k * k * m} = {k * k} * {m}"], f"\\sqrt{{{k * k * m}}}"
    # variables every few words (and wide number ranges), as in real problem sets: no 13-word span is shared
    # by chance, so decontaminate removes the eval leaks and nothing else
    if kind < 0.30:  # Chinese
        name = rng.choice(ZH_NAMES)
        a, b, c = rng.randint(100, 9999), rng.randint(100, 9999), rng.randint(10, 99)
        q = f"{name}有 {a} 个苹果，买了 {b} 个，送出 {c} 个，还剩几个？（题 {i}）"
        return {"id": pid, "question": q, "answer": str(a + b - c), "source": "zh"}, \
            [f"{a} + {b} = {a + b}", f"{a + b} - {c} = {a + b - c}"], str(a + b - c)
    name = rng.choice(NAMES)
    if kind < 0.55:
        a, b, p = rng.randint(10, 500), rng.randint(10, 500), rng.randint(2, 40)
        q = f"Shop {i} sells {a} pens and then {b} more at ${p} each. How much money, in dollars?"
        total = (a + b) * p
        return {"id": pid, "question": q, "answer": str(total), "source": "money"}, \
            [f"{a} + {b} = {a + b}", f"{a + b} * {p} = {total:,}"], f"${total:,}"
    if kind < 0.70:
        n, pct = rng.randint(1, 500) * 20, rng.choice([5, 10, 20, 25, 50])
        q = f"School {i}: {n} students, {pct}% walk to school. How many students walk?"
        return {"id": pid, "question": q, "answer": str(n * pct // 100), "source": "percent"}, \
            [f"{pct}% of {n} = {n * pct // 100}"], str(n * pct // 100)
    a, b, c = rng.randint(100, 9999), rng.randint(2, 30), rng.randint(10, 99)
    q = f"{name} has {a} stickers (album {i}), buys {b} packs of {c} each. How many stickers now?"
    return {"id": pid, "question": q, "answer": str(a + b * c), "source": "word"}, \
        [f"{b} * {c} = {b * c}", f"{a} + {b * c} = {a + b * c}"], str(a + b * c)


def render(rng: random.Random, p: dict, steps: list[str], ans: str) -> tuple[str, str]:
    """(content, finish_reason) of one teacher sample."""
    zh = p["source"] == "zh"
    r = rng.random()
    if r < 0.20 and p["source"] != "surd":  # a wrong final answer
        ans = str(int(p["answer"]) + rng.choice([-10, -1, 1, 2, 10]))
    elif r < 0.25 and len(steps) > 1:  # a wrong step, right answer
        steps = steps[:-1] + [steps[-1].rsplit("=", 1)[0] + f"= {rng.randint(1, 99)}"] + [steps[-1]]
    verbose = rng.random() < 0.5
    body = ([PAD] if verbose else []) + steps
    if p["source"] == "surd" and rng.random() < 0.5:
        ans = p["answer"]
    fmt = rng.random()
    if zh:
        a = ans.translate(FULLWIDTH) if rng.random() < 0.1 else ans
        end = f"答案是 {a} 个。" if fmt < 0.6 else f"答案：{a}"
    elif fmt < 0.35:
        end = f"#### {ans}"
    elif fmt < 0.65:
        end = f"The answer is {ans}."
    elif fmt < 0.9:
        end = f"So the final answer is $\\boxed{{{ans}}}$."
    else:
        end = f"Therefore the result is {ans}."
    text = "\n".join(body + [end])
    t = rng.random()
    if t < 0.30:
        text = f"<think>\n{PAD}\n{steps[0]}\n</think>\n{text}"
    elif t < 0.31:
        return f"<think>\n{PAD}\n{steps[0]}", "stop"  # never closed
    if rng.random() < 0.02:
        return text[: len(text) // 2], "length"
    return text, "stop"


def write_inputs(folder: Path, n_traces: int, seed: int = 0) -> tuple[Path, Path, Path]:
    rng = random.Random(seed)
    n_problems = n_traces // 4
    problems, traces, evals = [], [], []
    for i in range(n_problems):
        p, steps, ans = make_problem(rng, i)
        if i % 100 == 99:  # a near-duplicate re-export of the previous problem
            prev = problems[-1]
            p = dict(prev, id=f"{prev['id']}-dup", question=prev["question"].replace("?", " ?", 1))
            steps, ans = prev_steps, prev_ans  # noqa: F821 - set on the previous iteration
        problems.append(p)
        prev_steps, prev_ans = steps, ans
        for s in range(4):
            content, finish = render(random.Random(f"{p['id']}/{s}"), p, steps, ans)
            traces.append(json.dumps({"problem_id": p["id"], "teacher": "synthetic", "sample": s, "content": content,
                                      "finish_reason": finish}, ensure_ascii=False))
        if i % 500 == 0:  # an eval leak
            evals.append({"id": f"e{i}", "question": p["question"], "answer": p["answer"]})
    for j in range(1000):  # held-out templates, as `mathdistill problems` holds out whole templates
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        q = (f"A baker fills {a} trays with {b} rolls each for the weekend market. How many rolls are there?"
             if j % 2 else f"一辆车每小时行驶 {a} 千米，行驶 {b} 小时，一共行驶多少千米？")
        evals.append({"id": f"e-fresh{j}", "question": q, "answer": str(a * b)})
    for k in range(0, len(traces), 997):  # messy lines
        traces[k] = traces[k] + "\n{not json" + ("\n" if k % 2 else "")
    pp, tp, ep = folder / "problems.jsonl", folder / "traces.jsonl", folder / "eval.jsonl"
    pp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in problems), encoding="utf-8")
    tp.write_text("\n".join(traces) + "\n", encoding="utf-8")
    ep.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in evals), encoding="utf-8")
    return tp, pp, ep


FULL = dict(
    steps=["strip_think", "drop_empty", "drop_truncated", "verify_answer", "arith_check", "select", "length_filter",
           "decontaminate", "dedup"],
    formats=["alpaca_json", "messages", "parquet"],
    length_filter={"min_tokens": 8, "max_tokens": 512},
)


def grader_vs_math_verify(tp: Path, pp: Path, n: int) -> dict:
    """Our grader (fast paths first) against math-verify alone, on the same n (output, reference) pairs."""
    from math_verify import parse, verify

    refs = {json.loads(x)["id"]: json.loads(x)["answer"] for x in pp.read_text(encoding="utf-8").splitlines()}
    pairs = []
    for line in tp.read_text(encoding="utf-8").splitlines():
        try:
            t = json.loads(line)
        except json.JSONDecodeError:
            continue
        pairs.append((t["content"], refs[t["problem_id"]]))
    pairs = random.Random(1).sample(pairs, n)
    t0 = time.perf_counter()
    ours = [is_correct(o, r) for o, r in pairs]
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    mv = [bool(verify(parse(f"${r}$"), parse(o))) for o, r in pairs]
    t_mv = time.perf_counter() - t0
    differ = [(o[-60:], r, a, b) for (o, r), a, b in zip(pairs, ours, mv) if a != b]
    return {"pairs": n, "ours_s": t_ours, "math_verify_s": t_mv, "differ": len(differ), "examples": differ[:5]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", type=int, default=100_000)
    ap.add_argument("--grader-pairs", type=int, default=300, help="pairs for the grader vs math-verify comparison")
    ap.add_argument("--tokenizer", default="smollm2-135m")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t0 = time.perf_counter()
        tp, pp, ep = write_inputs(d, args.traces)
        print(f"inputs: {args.traces} traces, {tp.stat().st_size / 1e6:.1f} MB, written in {time.perf_counter() - t0:.1f}s")
        t0 = time.perf_counter()
        curate(CurateConfig(), tp, [pp], d / "seed")
        t_seed = time.perf_counter() - t0
        t0 = time.perf_counter()
        rep = curate(CurateConfig(**FULL, tokenizer=args.tokenizer), tp, [pp], d / "full", eval_problems=[ep])
        t_full = time.perf_counter() - t0
        g = rep["grader"]
        print()
        print(f"| step | in | out | removed | seconds |\n|---|---|---|---|---|")
        print(f"| read + join | | {rep['rows_in']} | | {rep['timing']['read']} |")
        for s in rep["steps"]:
            print(f"| {s['step']} | {s['in']} | {s['out']} | {s['removed']} | {rep['timing'][s['step']]} |")
        print(f"| write ({', '.join(rep['files'].values())}) | | | | {rep['timing']['write']} |")
        print(f"| report (md, png, token histograms) | | | | {rep['timing']['report']} |")
        print()
        print(f"seed recipe (strip_think, drop_empty; dataset.json): {t_seed:.1f}s")
        print(f"full recipe: {t_full:.1f}s for {rep['rows_in']} traces -> {rep['rows_out']} rows "
              f"({rep['rows_in'] / t_full:,.0f} traces/s); ratio full/seed {t_full / t_seed:.2f}x; "
              f"goal <= 30s: {'met' if t_full <= 30 else 'MISSED'}")
        print(f"answer checks: {g['total']}; fast path {g['fast_share']:.2%} (string {g['fast_string']}, number "
              f"{g['fast_number']}); math-verify {g['math_verify']}; no answer {g['no_answer']}; errors {g['errors']}")
        if args.grader_pairs:
            c = grader_vs_math_verify(tp, pp, args.grader_pairs)
            print(f"grader on {c['pairs']} sampled pairs: {c['ours_s']:.2f}s vs math-verify alone {c['math_verify_s']:.2f}s "
                  f"({c['math_verify_s'] / max(c['ours_s'], 1e-9):.0f}x); verdicts differ on {c['differ']}")
            for ex in c["examples"]:
                print(f"    output ...{ex[0]!r} ref {ex[1]!r}: ours {ex[2]}, math-verify {ex[3]}")


if __name__ == "__main__":
    main()
