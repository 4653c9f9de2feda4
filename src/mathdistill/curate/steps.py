"""The curate steps (each ``rows, ctx -> rows``, counting what it removes) and the STEPS registry."""

from __future__ import annotations

from typing import Callable

from ..answers import GradeOptions, answers_equal, extract_answer
from ..records import split_reasoning
from ..progress import bar
from .config import STEP_NAMES, CurateConfig
from .dedup import decontaminate_rows, dedup_rows
from .rows import Ctx, Row, drop_row, by_problem


def _strip_think(rows: list[Row], ctx: Ctx) -> list[Row]:
    tags = tuple(tuple(t) for t in ctx.cfg.reasoning_tags)
    for r in rows:
        low = r.output.lower()
        if any(o.lower() in low and c.lower() not in low for o, c in tags):
            ctx.tally.add("strip_think: unclosed_think", f"{r.where}: {r.pid}")
        reasoning, content = split_reasoning(r.output, tags)
        if reasoning is not None or content != r.output.strip():
            ctx.tally.add("strip_think: modified")
        r.output = content
        if reasoning:
            r.reasoning = "\n".join(x for x in (r.reasoning, reasoning) if x)
        r.changed()
    return rows


def _drop_empty(rows: list[Row], ctx: Ctx) -> list[Row]:
    keep = []
    for r in rows:
        if r.output.strip():
            keep.append(r)
        else:
            drop_row(ctx, "drop_empty: removed", r)
    return keep


def _drop_truncated(rows: list[Row], ctx: Ctx) -> list[Row]:
    keep = []
    for r in rows:
        if (r.finish_reason or "").lower() == "length":
            drop_row(ctx, "drop_truncated: removed", r)
        else:
            keep.append(r)
    return keep


def _grade_opts(cfg: CurateConfig) -> GradeOptions:
    v = cfg.verify_answer
    return GradeOptions(use_math_verify=v.use_math_verify, timeout_s=v.timeout_s)


def _answer(r: Row) -> str | None:
    if r.answer is None:
        r.answer = extract_answer(r.output)
    return r.answer


def _majority_vote(rows: list[Row], ctx: Ctx) -> list[Row]:
    c = ctx.cfg.majority_vote
    opts = _grade_opts(ctx.cfg)
    keep: list[Row] = []
    agreements: list[float] = []
    labelled = 0
    for pid, group in by_problem(rows).items():
        if group[0].problem.answer is not None:
            keep.extend(group)  # has a reference: verify_answer's job
            continue
        clusters: list[list[Row]] = []  # rows whose answers are equivalent, in first-seen order
        for r in group:
            a = _answer(r)
            if a is None:
                continue
            for cl in clusters:
                if answers_equal(a, cl[0].answer, opts, ctx.grade):
                    cl.append(r)
                    break
            else:
                clusters.append([r])
        sizes = sorted((len(cl) for cl in clusters), reverse=True)
        top = max(clusters, key=len) if clusters else []  # max keeps the first of equal sizes
        agreement = len(top) / len(group)
        reason = None
        if len(group) < c.min_samples:
            reason = "majority_vote: too_few_samples"
        elif not clusters:
            reason = "majority_vote: no_answer"
        elif len(sizes) > 1 and sizes[0] == sizes[1]:
            reason = "majority_vote: tie"
        elif agreement < c.min_agreement:
            reason = "majority_vote: low_agreement"
        if len(group) >= c.min_samples:
            agreements.append(agreement)
        if reason:
            for r in group:
                drop_row(ctx, reason, r, f"agreement {agreement:.2f}")
            continue
        labelled += 1
        for r in group:
            r.label, r.agreement = top[0].answer, round(agreement, 4)
            if c.keep == "all" or any(r is x for x in top):
                keep.append(r)
            else:
                drop_row(ctx, "majority_vote: disagrees", r, f"{r.answer!r} vs {r.label!r}")
    ctx.agreement["vote"] = {"problems": len(agreements), "labelled": labelled, "values": agreements}
    return keep


def _verify_answer(rows: list[Row], ctx: Ctx) -> list[Row]:
    c = ctx.cfg.verify_answer
    opts = _grade_opts(ctx.cfg)
    keep: list[Row] = []
    per_problem: dict[str, list[int]] = {}
    with bar("verify", total=len(rows), unit="row") as b:
        for i, r in enumerate(rows):
            ref = r.problem.answer if r.problem.answer is not None else r.label
            if ref is None:
                if c.no_reference == "keep":
                    ctx.tally.add("verify_answer: kept_no_reference")
                    keep.append(r)
                else:
                    drop_row(ctx, "verify_answer: no_reference", r)
            else:
                ok = answers_equal(_answer(r), ref, opts, ctx.grade)
                if r.problem.answer is not None:
                    per_problem.setdefault(r.problem.id, []).append(int(ok))
                if ok:
                    keep.append(r)
                elif r.answer is None:
                    drop_row(ctx, "verify_answer: no_answer", r)
                else:
                    drop_row(ctx, "verify_answer: wrong", r, f"{r.answer!r} vs {ref!r}")
            if i % 1000 == 999:
                b.advance(1000)
        b.advance(len(rows) % 1000)
    ctx.agreement["reference"] = {"problems": len(per_problem), "traces": sum(len(v) for v in per_problem.values()),
                                  "correct": sum(sum(v) for v in per_problem.values()),
                                  "values": [sum(v) / len(v) for v in per_problem.values()]}
    return keep


def _repair(r: Row, ctx: Ctx, text: str) -> str | None:
    """Repair ``r``'s wrong steps in place; None when done, else why it cannot be (the row is then dropped)."""
    from ..arith import repair_steps

    rep = repair_steps(text, max_fixes=ctx.cfg.arith_check.max_fixes)
    if not rep.ok:
        return rep.reason or "unknown"
    before, after = extract_answer(text), extract_answer(rep.text)
    if rep.reused or after != before:  # the answer rests on a repaired value: it must match the reference now
        ref = r.problem.answer if r.problem.answer is not None else r.label
        if ref is None:
            return "no_reference"
        if after is None or not answers_equal(after, ref, _grade_opts(ctx.cfg), ctx.grade):
            return "answer"
    if ctx.cfg.keep_think and r.reasoning:
        reasoning, content = split_reasoning(rep.text, (("<think>", "</think>"),))
        r.reasoning, r.output = reasoning, content
    else:
        r.output = rep.text
    r.changed()
    ctx.tally.add("arith_check: repaired", f"{r.where}: {r.pid} (" + "; ".join(
        f"{f.expr} = {f.old} -> {f.new}" + (f", {f.reused} later use(s)" if f.reused else "") for f in rep.fixes[:3]) + ")")
    ctx.tally.add("arith_check: steps_repaired", n=len(rep.fixes))
    if rep.reused:
        ctx.tally.add("arith_check: later_uses_repaired", n=rep.reused)
    ex = ctx.extra.setdefault("arith_check", {"repaired": 0, "steps_repaired": 0})
    ex["repaired"] += 1
    ex["steps_repaired"] += len(rep.fixes)
    return None


def _arith_check(rows: list[Row], ctx: Ctx) -> list[Row]:
    from ..arith import find_steps

    action = ctx.cfg.arith_check.action
    if action == "repair":
        ctx.extra["arith_check"] = {"repaired": 0, "steps_repaired": 0}
    keep = []
    for r in rows:
        text = r.text(ctx.cfg.keep_think)
        steps = find_steps(text)
        bad = [s for s in steps if not s.ok]
        if not steps:
            ctx.tally.add("arith_check: no_steps")
        if not bad:
            keep.append(r)
            continue
        detail = f"{bad[0].expr} = {bad[0].claimed} (is {bad[0].value})"
        if action == "drop":
            drop_row(ctx, "arith_check: wrong_step", r, detail)
        elif action == "keep":
            ctx.tally.add("arith_check: wrong_step_kept", f"{r.where}: {r.pid} ({detail})")
            keep.append(r)
        else:
            why = _repair(r, ctx, text)
            if why is None:
                keep.append(r)
            else:
                drop_row(ctx, f"arith_check: unrepairable_{why}", r, detail)
    return keep


def _select(rows: list[Row], ctx: Ctx) -> list[Row]:
    c = ctx.cfg.select
    if c.mode == "shortest":
        lengths = ctx.tokens(rows) if c.by == "tokens" else [len(r.text(ctx.cfg.keep_think)) for r in rows]
        length = {id(r): n for r, n in zip(rows, lengths)}
    chosen: set[int] = set()
    for group in by_problem(rows).values():
        if c.mode == "shortest":
            group = sorted(group, key=lambda r: (length[id(r)], r.sample, r.idx))
        chosen.update(id(r) for r in group[: c.k])
    keep = []
    for r in rows:
        if id(r) in chosen:
            keep.append(r)
        else:
            drop_row(ctx, "select: not_selected", r)
    return keep


def _length_filter(rows: list[Row], ctx: Ctx) -> list[Row]:
    c = ctx.cfg.length_filter
    keep = []
    for r, n in zip(rows, ctx.tokens(rows)):
        if n < c.min_tokens:
            drop_row(ctx, "length_filter: too_short", r, f"{n} tokens")
        elif n > c.max_tokens:
            drop_row(ctx, "length_filter: too_long", r, f"{n} tokens")
        else:
            keep.append(r)
    return keep


STEPS: dict[str, Callable[[list[Row], Ctx], list[Row]]] = {
    "strip_think": _strip_think,
    "drop_empty": _drop_empty,
    "drop_truncated": _drop_truncated,
    "majority_vote": _majority_vote,
    "verify_answer": _verify_answer,
    "arith_check": _arith_check,
    "select": _select,
    "length_filter": _length_filter,
    "decontaminate": decontaminate_rows,
    "dedup": dedup_rows,
}
assert tuple(STEPS) == STEP_NAMES
