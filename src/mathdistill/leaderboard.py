"""The ablation leaderboard: every cell's scores with intervals, its paired difference to the baseline cell,
the effect of each varied field, a Pareto plot; written as ``leaderboard.md``, ``leaderboard.csv`` and a
self-contained ``leaderboard.html`` (plots inline).

All intervals come from the one bootstrap of :mod:`mathdistill.stats` (as in ``eval`` and ``eval --compare``),
with one draw of problem indices shared by every cell, so cell differences are paired: every cell was scored on
the same eval problems, in the same order. A difference is cell - baseline (B - A, the ``stats`` convention).
The resample count, confidence and seed default to the baseline cell's ``eval.score`` settings, so the same
predictions and seed give a cell the same interval here as in its ``scores.json``.

Effect of a varied field (value ``v`` against the baseline's value ``v0``): the mean over *matched pairs*
of cells (equal on every other varied field) of ``Overall(v) - Overall(v0)``, with its interval from the
same resamples. Fields whose values are sets (``use: [task1, train]``) also get one row per member
(``+task1``): pairs of cells whose sets differ by that member only. Without a matched pair (explicit
``cells:``), the difference of the mean Overall of the cells with each value is shown, marked unmatched.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .io import write_json
from .scores import ScoreConfig

if TYPE_CHECKING:
    import numpy as np

SCORE_FIELDS = ("AS", "CQS", "ES", "MLS", "overall")

LABELS = {"AS": "AS", "CQS": "CQS", "ES": "ES", "MLS": "MLS", "overall": "Overall"}


@dataclass
class CellResult:
    """One cell as the leaderboard sees it."""

    name: str
    values: dict[str, Any]  # varied field (dotted path) -> this cell's value
    status: str = "ok"  # ok | failed
    reason: str | None = None  # why it failed
    predictions: list[dict[str, Any]] | None = None  # predictions.jsonl rows of the student
    model_bytes: int | None = 0  # None: size unknown (MLS null, Overall over AS, CQS, ES)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    cqs_kind: str = "proxy"
    seed_predictions: list[list[dict[str, Any]]] | None = None  # every training seed's rows (a cell with seeds)
    seeds: list[int | None] | None = None
    seed_failures: list[str] | None = None


@dataclass
class BaseModelResult:
    label: str
    predictions: list[dict[str, Any]]
    model_bytes: int | None
    score: ScoreConfig = field(default_factory=ScoreConfig)


def value_label(v: Any) -> str:
    """A short, stable label for a field value (``[task1, train]`` -> ``task1+train``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "+".join(value_label(x) for x in v) if v else "(none)"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{value_label(x)}" for k, x in v.items()) + "}"
    return str(v)


def _fmt(x: float | None, digits: int = 1, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _mb(size: int | None) -> str:
    return "unknown" if size is None else f"{size / 1e6:.1f}"


def _ci(iv: Any, sign: bool = False) -> str:
    return f"{_fmt(iv.point, sign=sign)} [{_fmt(iv.lo, sign=sign)}, {_fmt(iv.hi, sign=sign)}]"


def _is_set_axis(values: list[Any]) -> bool:
    return all(isinstance(v, (list, tuple)) and all(isinstance(x, (str, int)) for x in v) for v in values)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated when lower x and higher y are better."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return front


def compute(cells: list[CellResult], baseline: str | None, varied: list[str], samples: int | None = None,
            confidence: float | None = None, seed: int | None = None,
            base_models: list[BaseModelResult] | None = None) -> dict[str, Any]:
    """Every number the leaderboard shows, as a JSON-able dict (the writers only format it).

    ``samples``/``confidence``/``seed``: the bootstrap's; None takes the baseline cell's ``score`` settings."""
    from .scores import score_columns, score_differences, score_intervals, score_stat
    from .stats import bootstrap_indices, interval, resample

    ok = [c for c in cells if c.status == "ok" and c.predictions]
    failed = [c for c in cells if c not in ok]
    out: dict[str, Any] = {"varied": varied, "samples": samples, "confidence": confidence, "seed": seed,
                           "rows": [], "failed": [{"name": c.name, "values": {k: value_label(v) for k, v in c.values.items()},
                                                   "reason": c.reason or "no predictions"} for c in failed],
                           "effects": [], "base_models": [], "baseline": None}
    if not ok:
        return out
    base = next((c for c in ok if c.name == baseline), None)
    if base is None:  # the named baseline failed: compare to the first cell that was scored
        out["baseline_note"] = f"baseline cell {baseline!r} has no scores; differences are against {ok[0].name!r}"
        base = ok[0]
    out["baseline"] = base.name
    boot = base.score.model_copy(update={k: v for k, v in {"bootstrap_samples": samples, "confidence": confidence,
                                                           "bootstrap_seed": seed}.items() if v is not None})
    out.update(samples=boot.bootstrap_samples, confidence=boot.confidence, seed=boot.bootstrap_seed)
    ids = [p["problem_id"] for p in base.predictions or []]
    n = len(ids)
    out["n"] = n
    idx = bootstrap_indices(n, boot.bootstrap_samples, boot.bootstrap_seed)
    cols = {c.name: score_columns(c.predictions or [], c.model_bytes) for c in ok}
    draws: dict[str, np.ndarray] = {}
    points: dict[str, float] = {}
    same_of = {c.name: [p["problem_id"] for p in c.predictions or []] == ids for c in ok}
    seeded = {c.name: _draws(c, None, idx, boot.bootstrap_seed) for c in ok
              if same_of[c.name] and c.seed_predictions and len(c.seed_predictions) > 1}
    for c in ok:
        cfg = c.score.model_copy(update={"confidence": boot.confidence})
        same = same_of[c.name]
        if same and (c.name in seeded or base.name in seeded):  # intervals over seeds and problems (hierarchical bootstrap)
            pc, dc = seeded.get(c.name) or _draws(c, [cols[c.name]], idx, boot.bootstrap_seed)
            pb, db = _draws(base, [cols[base.name]] if base.name not in seeded else None, idx, boot.bootstrap_seed, c.score)
            ivs = {k: interval(pc[k], dc[k], boot.confidence) for k in SCORE_FIELDS}
            diff = ({k: interval(pc[k] - pb[k], dc[k] - db[k], boot.confidence) for k in SCORE_FIELDS} if same else None)
            if same:
                draws[c.name], points[c.name] = dc["overall"], pc["overall"]
        else:
            ivs = score_intervals(cols[c.name], cfg, idx if same else None)
            diff = score_differences(cols[base.name], cols[c.name], cfg, idx) if same else None
            if same:
                draws[c.name] = score_stat(c.score)(resample(cols[c.name], idx))["overall"]
                points[c.name] = ivs["overall"].point
        out["rows"].append({
            "name": c.name, "values": {k: value_label(c.values.get(k)) for k in varied},
            "scores": {k: ivs[k].as_dict() for k in SCORE_FIELDS},
            "diff": {k: diff[k].as_dict() for k in SCORE_FIELDS} if diff else None,
            "diff_significant": bool(diff and diff["overall"].excludes_zero()),
            **({"resolution": "baseline"} if c.name == base.name else _power(diff["overall"], boot.confidence) if diff else {}),
            "seeds": c.seeds if c.name in seeded else None, "seed_failures": c.seed_failures or None,
            "mean_tokens": _mean_tokens(c), "model_bytes": c.model_bytes, "n": len(c.predictions or []),
            "cqs_kind": c.cqs_kind, "same_problems": same,
        })
    out["rows"].sort(key=lambda r: -r["scores"]["overall"]["point"])
    for i, r in enumerate(out["rows"], 1):
        r["rank"] = i
    for b in base_models or []:
        bc = score_columns(b.predictions, b.model_bytes)
        if [p["problem_id"] for p in b.predictions] != ids:
            continue
        cfg = b.score.model_copy(update={"confidence": boot.confidence})
        ivs = score_intervals(bc, cfg, idx)
        dif = score_differences(cols[base.name], bc, cfg, idx)
        out["base_models"].append({"name": b.label, "scores": {k: ivs[k].as_dict() for k in SCORE_FIELDS},
                                   "diff": {k: dif[k].as_dict() for k in SCORE_FIELDS}, **_power(dif["overall"], boot.confidence),
                                   "mean_tokens": float(bc["tokens"].mean()), "model_bytes": b.model_bytes})
    out["effects"] = _effects([c for c in ok if c.name in draws], base, varied, draws, points, boot.confidence)
    return out


def _mean_tokens(c: CellResult) -> float:
    """Completion tokens per problem: the mean over every problem of every seed that scored (a cell with seeds is
    scored as the mean over its seeds, so its length is too)."""
    tokens = [float(p["tokens"]) for rows in (c.seed_predictions or [c.predictions or []]) for p in rows]
    return sum(tokens) / len(tokens) if tokens else float("nan")


def _others_equal(a: CellResult, b: CellResult, varied: list[str], skip: str) -> bool:
    return all(json.dumps(a.values.get(k), sort_keys=True) == json.dumps(b.values.get(k), sort_keys=True)
               for k in varied if k != skip)


def _effect_row(fieldname: str, value: str, ref: str, pairs: list[tuple[str, str]], with_v: list[str], with_ref: list[str],
                draws: dict[str, np.ndarray], points: dict[str, float], confidence: float) -> dict[str, Any] | None:
    import numpy as np

    from .stats import interval

    if pairs:
        pt = float(np.mean([points[a] - points[b] for a, b in pairs]))
        dr = np.mean([draws[a] - draws[b] for a, b in pairs], axis=0)
        kind = f"{len(pairs)} matched pair{'s' if len(pairs) > 1 else ''}"
    elif with_v and with_ref:
        pt = float(np.mean([points[a] for a in with_v]) - np.mean([points[b] for b in with_ref]))
        dr = np.mean([draws[a] for a in with_v], axis=0) - np.mean([draws[b] for b in with_ref], axis=0)
        kind = f"unmatched: mean of {len(with_v)} vs {len(with_ref)} cells"
    else:
        return None
    iv = interval(pt, dr, confidence)
    return {"field": fieldname, "value": value, "vs": ref, "effect": iv.as_dict(), "significant": iv.excludes_zero(),
            "basis": kind, **_power(iv, confidence)}


def _power(iv: Any, confidence: float) -> dict[str, Any]:
    """The minimum detectable effect implied by a difference's interval (80 % power) and what it resolves."""
    from .power import mde_from_interval, resolvable

    m = mde_from_interval(iv.lo, iv.hi, confidence)
    return {"mde": round(m, 4) if math.isfinite(m) else None, "resolution": resolvable(iv.lo, iv.hi)}


def _draws(c: CellResult, cols: list[dict[str, np.ndarray]] | None, idx: np.ndarray, seed: int,
           score: ScoreConfig | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """A cell's scores (the mean over its seeds) and their draws over seeds, then problems
    (:func:`stats.hierarchical_draws`; ``cols``: its per-seed columns, None: read from ``c.seed_predictions``).
    The problem resamples ``idx`` are shared with every other cell, so differences stay paired over problems;
    each cell resamples its seeds with its own seed (from its name), independently of the others."""
    import zlib

    from .scores import score_columns, score_stat
    from .stats import hierarchical_draws

    if cols is None:
        cols = [score_columns(rows, c.model_bytes) for rows in (c.seed_predictions or [c.predictions or []])]
    point, draws = hierarchical_draws(cols, score_stat(score or c.score), indices=idx,
                                      seed=zlib.crc32(c.name.encode()) ^ seed)
    return {k: float(point[k][0]) for k in SCORE_FIELDS}, {k: draws[k] for k in SCORE_FIELDS}


def _effects(ok: list[CellResult], base: CellResult, varied: list[str], draws: dict[str, np.ndarray],
             points: dict[str, float], confidence: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    key = lambda v: json.dumps(v, sort_keys=True)  # noqa: E731
    for f in varied:
        vals: list[Any] = []
        for c in ok:
            if key(c.values.get(f)) not in {key(v) for v in vals}:
                vals.append(c.values.get(f))
        if len(vals) < 2:
            continue
        ref = base.values.get(f) if any(key(base.values.get(f)) == key(v) for v in vals) else vals[0]
        for v in vals:
            if key(v) == key(ref):
                continue
            with_v = [c for c in ok if key(c.values.get(f)) == key(v)]
            with_ref = [c for c in ok if key(c.values.get(f)) == key(ref)]
            pairs = [(a.name, b.name) for a in with_v for b in with_ref if _others_equal(a, b, varied, f)]
            r = _effect_row(f, value_label(v), value_label(ref), pairs, [c.name for c in with_v], [c.name for c in with_ref],
                            draws, points, confidence)
            if r:
                rows.append(r)
        if _is_set_axis(vals):
            members: list[Any] = []
            for v in vals:
                members += [x for x in v if x not in members]
            for m in members:
                pairs = []
                for a in ok:
                    va = a.values.get(f)
                    if not isinstance(va, (list, tuple)) or m not in va:
                        continue
                    for b in ok:
                        vb = b.values.get(f)
                        if (isinstance(vb, (list, tuple)) and set(vb) == set(va) - {m}
                                and _others_equal(a, b, varied, f)):
                            pairs.append((a.name, b.name))
                with_m = [c.name for c in ok if m in (c.values.get(f) or [])]
                without = [c.name for c in ok if m not in (c.values.get(f) or [])]
                r = _effect_row(f, f"+{m}", f"without {m}", pairs, with_m, without, draws, points, confidence)
                if r:
                    rows.append(r)
    return rows


# ------------------------------------------------------------------------------------------------ writers

def _plot_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def plots(board: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes: ``pareto`` (Overall vs mean tokens and vs model MB) and ``effects`` (when there are any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    rows = board["rows"]
    if not rows:
        return out
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, xkey, xlabel, scale in ((axes[0], "mean_tokens", "mean completion tokens per problem (fewer is better)", 1.0),
                                    (axes[1], "model_bytes", "model MB as served (smaller is better)", 1e-6)):
        xs = [r[xkey] * scale if r[xkey] is not None else math.nan for r in rows]  # unknown size: not plotted
        ys = [r["scores"]["overall"]["point"] for r in rows]
        err = [[y - r["scores"]["overall"]["lo"] for y, r in zip(ys, rows)], [r["scores"]["overall"]["hi"] - y for y, r in zip(ys, rows)]]
        ax.errorbar(xs, ys, yerr=err, fmt="o", color="tab:blue", alpha=0.75, capsize=3, label="cell (95% interval)")
        front = sorted(pareto_front(list(zip(xs, ys))), key=lambda i: xs[i])
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "-", color="tab:red", lw=1.5, label="Pareto front")
        for i, r in enumerate(rows):  # the rank, as in the leaderboard table (names would overlap)
            ax.annotate(str(r["rank"]), (xs[i], ys[i]), fontsize=7, xytext=(4, 3), textcoords="offset points",
                        color="tab:red" if i in front else "black")
        for b in board.get("base_models", []):
            bx = b[xkey] * scale if b[xkey] is not None else math.nan
            ax.plot([bx], [b["scores"]["overall"]["point"]], "s", color="gray", label="base model (untrained)")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Overall")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("Overall against cost (labels: leaderboard rank); the Pareto front (red): cells no other cell beats on both")
    fig.tight_layout()
    out["pareto"] = _plot_png(fig)
    plt.close(fig)
    eff = board.get("effects") or []
    if eff:
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(eff) + 1.2))
        labels = [f"{e['field']} = {e['value']} (vs {e['vs']})" for e in eff]
        pts = [e["effect"]["point"] for e in eff]
        lo = [p - e["effect"]["lo"] for p, e in zip(pts, eff)]
        hi = [e["effect"]["hi"] - p for p, e in zip(pts, eff)]
        ys = list(range(len(eff)))[::-1]
        ax.errorbar(pts, ys, xerr=[lo, hi], fmt="o", capsize=3)
        ax.axvline(0, color="gray", lw=1)
        ax.set_yticks(ys, labels, fontsize=8)
        ax.set_xlabel("effect on Overall (points, 95% interval)")
        ax.set_title("Effect of each varied field, averaged over the others")
        fig.tight_layout()
        out["effects"] = _plot_png(fig)
        plt.close(fig)
    return out


def _header(board: dict[str, Any], title: str) -> list[str]:
    n_ok, n_failed = len(board["rows"]), len(board["failed"])
    lines = [f"# Ablation leaderboard: {title}", "",
             f"{n_ok + n_failed} cells: {n_ok} scored, {n_failed} failed. "]
    if board["rows"]:
        kind = board["rows"][0].get("cqs_kind", "proxy")
        lines[-1] += (f"All cells are scored on the same {board.get('n', 0)} eval problems. Intervals: "
                      f"{int(board['confidence'] * 100)}% percentile bootstrap over problems ({board['samples']} resamples, "
                      f"seed {board['seed']}), paired for differences; `*` marks a difference whose interval excludes 0. "
                      f"MDE: the smallest difference this eval resolves with 80% power (from the difference's interval: "
                      f"half-width x (z_a/2 + z_0.8) / z_a/2); a difference whose interval includes 0 is *not resolvable at "
                      f"this size*, which is not evidence of no effect. "
                      f"CQS is the {'offline proxy (not an LLM judge)' if kind == 'proxy' else kind}. "
                      f"Baseline cell: **{board['baseline']}**.")
        if any(r["scores"]["MLS"]["point"] is None for r in board["rows"]):
            lines += ["", "Note: a cell whose model size is unknown has MLS n/a, and its Overall is over AS, CQS and ES "
                          "with their weights renormalised (not comparable with a four-term Overall)."]
        seeded = [r for r in board["rows"] if r.get("seeds")]
        if seeded:
            lines += ["", f"Cells with several training seeds ({', '.join(r['name'] for r in seeded)}): their scores are "
                      "the mean over seeds and their intervals resample seeds, then problems (hierarchical bootstrap)."]
            for r in seeded:
                if r.get("seed_failures"):
                    lines += [f"Cell {r['name']}: scored on seeds {r['seeds']}; failed: {'; '.join(r['seed_failures'])}."]
        if board.get("baseline_note"):
            lines += ["", f"Note: {board['baseline_note']}."]
    return lines


def to_markdown(board: dict[str, Any], title: str, images: dict[str, str] | None = None) -> str:
    from .stats import Interval

    varied = board["varied"]
    lines = _header(board, title)
    if board["rows"]:
        head = ["#", "cell", *varied, "AS", "CQS", "ES", "MLS", "Overall", "Δ Overall vs baseline", "MDE", "tokens", "MB"]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in board["rows"]:
            s = r["scores"]
            d = r["diff"]
            dtxt = ("baseline" if r["name"] == board["baseline"] else
                    (_ci(Interval(**d["overall"]), sign=True) + (" *" if r["diff_significant"] else "")) if d else "n/a (other problems)")
            cells = [str(r["rank"]), r["name"], *[r["values"][k] for k in varied],
                     *[_ci(Interval(**s[k])) for k in ("AS", "CQS", "ES", "MLS")], f"**{_ci(Interval(**s['overall']))}**",
                     dtxt, _mde(r) if d and r["name"] != board["baseline"] else "", f"{r['mean_tokens']:.0f}",
                     _mb(r["model_bytes"])]
            lines.append("| " + " | ".join(cells) + " |")
        for b in board.get("base_models", []):
            s = b["scores"]
            cells = ["", f"{b['name']} (untrained base, reference)", *["" for _ in varied],
                     *[_ci(Interval(**s[k])) for k in ("AS", "CQS", "ES", "MLS")], _ci(Interval(**s["overall"])),
                     _ci(Interval(**b["diff"]["overall"]), sign=True), _mde(b), f"{b['mean_tokens']:.0f}",
                     _mb(b["model_bytes"])]
            lines.append("| " + " | ".join(cells) + " |")
    if board["effects"]:
        lines += ["", "## Effect of each varied field (averaged over the others)", "",
                  "| field | value | against | effect on Overall | MDE | basis |", "|---|---|---|---|---|---|"]
        for e in board["effects"]:
            lines.append(f"| {e['field']} | {e['value']} | {e['vs']} | {_ci(Interval(**e['effect']), sign=True)}"
                         f"{' *' if e['significant'] else ''} | {_mde(e)} | {e['basis']} |")
    if board["failed"]:
        lines += ["", "## Failed cells", "", "| cell | reason |", "|---|---|"]
        for f in board["failed"]:
            lines.append(f"| {f['name']} | {f['reason'].replace('|', '/')} |")
    if images:
        lines += ["", "## Plots", ""] + [f"![{k}]({v})" for k, v in images.items()]
    return "\n".join(lines) + "\n"


def _mde(r: dict[str, Any]) -> str:
    """``6.9 (not resolvable at this size)`` or ``6.9``: a difference's MDE and, when its interval includes 0, why."""
    if r.get("mde") is None:
        return ""
    return f"{r['mde']:.1f}" + (f" ({r['resolution']})" if r.get("resolution") != "resolved" else "")


def csv_rows(board: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    varied = board["varied"]
    cols = ["rank", "cell", "status", "reason", *varied]
    for k in SCORE_FIELDS:
        cols += [k, f"{k}_lo", f"{k}_hi"]
    for k in SCORE_FIELDS:
        cols += [f"d_{k}", f"d_{k}_lo", f"d_{k}_hi"]
    cols += ["d_overall_mde", "resolution", "mean_tokens", "model_bytes", "n"]
    rows = []
    for r in board["rows"]:
        row: dict[str, Any] = {"rank": r["rank"], "cell": r["name"], "status": "ok", "reason": "", **r["values"]}
        for k in SCORE_FIELDS:
            s = r["scores"][k]
            row.update({k: s["point"], f"{k}_lo": s["lo"], f"{k}_hi": s["hi"]})
            if r["diff"]:
                d = r["diff"][k]
                row.update({f"d_{k}": d["point"], f"d_{k}_lo": d["lo"], f"d_{k}_hi": d["hi"]})
        row.update({"d_overall_mde": r.get("mde", ""), "resolution": r.get("resolution", ""),
                    "mean_tokens": round(r["mean_tokens"], 3), "model_bytes": r["model_bytes"], "n": r["n"]})
        rows.append(row)
    for f in board["failed"]:
        rows.append({"cell": f["name"], "status": "failed", "reason": f["reason"], **f["values"]})
    return cols, rows


def to_html(board: dict[str, Any], title: str, pngs: dict[str, bytes]) -> str:
    md_table = to_markdown(board, title)
    body = []
    in_table = False
    for line in md_table.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    for name, png in pngs.items():
        body.append(f"<h2>{'Pareto plot' if name == 'pareto' else 'Effects'}</h2>"
                    f"<img alt='{name}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
             "font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
             "th{background:#f3f3f3}tr:nth-child(even){background:#fafafa}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    t = html.escape(text)
    while "**" in t:
        t = t.replace("**", "<b>", 1).replace("**", "</b>", 1)
    parts = t.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def write(board: dict[str, Any], out_dir: str | Path, title: str) -> dict[str, Path]:
    """Write leaderboard.md/.csv/.html (+ the plot PNGs and leaderboard.json) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = plots(board)
    names = {k: f"leaderboard_{k}.png" for k in pngs}
    for k, png in pngs.items():
        (out / names[k]).write_bytes(png)
    (out / "leaderboard.md").write_text(to_markdown(board, title, names), encoding="utf-8")
    cols, rows = csv_rows(board)
    with open(out / "leaderboard.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out / "leaderboard.html").write_text(to_html(board, title, pngs), encoding="utf-8")
    write_json(out / "leaderboard.json", board)
    return {"md": out / "leaderboard.md", "csv": out / "leaderboard.csv", "html": out / "leaderboard.html"}
