"""Stage ``report``: ``report.md`` (with PNG plots beside it) and a self-contained ``report.html`` (the same
content, plots inline as data URIs, no external resources) for an eval folder, a run folder, or any folder
holding eval folders.

Content: the score table with bootstrap intervals (overall and per family), CQS components (``cqs_kind``
named wherever CQS appears), misses by reason, plots (scores with error bars, the Overall/tokens trade-off
over every evaluated model in the folder, token histograms, the training loss of a run), the 10 worst
failures of each model with their outputs, and what is needed to reproduce the numbers.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .io import read_json
from .plots import export_table, plot_loss_curve

SCORE_KEYS = ("AS", "CQS", "ES", "MLS", "overall")
WORST_N = 10  # failures shown per model
OUTPUT_CHARS = 1500  # characters of each failure's output shown (head and tail)
MAX_DEPTH = 3  # how deep a folder is searched for eval folders


@dataclass
class EvalEntry:
    label: str
    folder: Path | None
    scores: dict[str, Any]
    preds: list[dict[str, Any]] = field(default_factory=list)


def _read_preds(p: Path) -> list[dict[str, Any]]:
    if not p.is_file():
        return []
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]


STAGE_CACHE = "cache"  # run.py's content-addressed stage cache folder under a run / grid folder


def _is_eval(s: Any) -> bool:
    return isinstance(s, dict) and "AS" in s and "overall" in s


def collect_evals(root: Path) -> list[EvalEntry]:
    """Every evaluated model under ``root``: itself if it is an eval folder, else eval folders below it
    (a run's ``eval/base`` and ``eval/student`` first), or the per-model blocks of a run's scores.json."""
    top = read_json(root / "scores.json") if (root / "scores.json").is_file() else None
    if _is_eval(top):
        return [EvalEntry(str(top.get("meta", {}).get("label") or root.name), root, top, _read_preds(root / "predictions.jsonl"))]
    found: list[EvalEntry] = []
    seen: set[Path] = set()
    for depth in range(1, MAX_DEPTH + 1):
        for f in sorted(root.glob("/".join(["*"] * depth) + "/scores.json")):
            if f.relative_to(root).parts[0] == STAGE_CACHE:
                continue  # the stage cache under a run or grid folder holds copies of the evals shown elsewhere
            s = read_json(f)
            if _is_eval(s) and f.parent not in seen:
                seen.add(f.parent)
                rel = f.parent.relative_to(root)
                label = rel.name if rel.parent == Path("eval") else str(rel)
                found.append(EvalEntry(label, f.parent, s, _read_preds(f.parent / "predictions.jsonl")))
    if isinstance(top, dict):
        # a run's own per-model blocks, for models whose eval folder is gone
        have = {e.label for e in found}
        for m in ("base", "student"):
            if _is_eval(top.get(m)) and m not in have:
                found.append(EvalEntry(m, None, top[m]))
    order = {"base": 0, "student": 1}
    return sorted(found, key=lambda e: (order.get(e.label, 2), e.label))


# ---- plots ----------------------------------------------------------------------------------------------


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _cqs_label(kind: str | None) -> str:
    return f"CQS ({kind or 'proxy'})"


def _plots(root: Path, evals: list[EvalEntry]) -> dict[str, tuple[str, bytes]]:
    """name -> (caption, PNG bytes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, tuple[str, bytes]] = {}
    kind = evals[0].scores.get("cqs_kind", "proxy")

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / max(len(evals), 1)
    for j, e in enumerate(evals):
        vals = [e.scores[k] if e.scores.get(k) is not None else 0.0 for k in SCORE_KEYS]  # MLS of an unknown size: no bar
        iv = e.scores.get("intervals") or {}
        err = [[max(0.0, v - (iv.get(k) or [v, v])[0]) for k, v in zip(SCORE_KEYS, vals)],
               [max(0.0, (iv.get(k) or [v, v])[1] - v) for k, v in zip(SCORE_KEYS, vals)]]
        xs = [i + j * width for i in range(len(SCORE_KEYS))]
        bars = ax.bar(xs, vals, width, yerr=err, capsize=3, label=e.label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, label_type="center")
    ax.set_xticks([i + width * (len(evals) - 1) / 2 for i in range(len(SCORE_KEYS))],
                  ["AS", _cqs_label(kind), "ES", "MLS", "Overall"])
    ax.set_ylim(0, 105)
    ax.set_ylabel("score (0-100)")
    ax.set_title("Scores with 95% bootstrap intervals")
    ax.legend(fontsize=8)
    plots["scores"] = ("Scores per model; error bars are the bootstrap intervals", _png(fig))

    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for e in evals:
        iv = e.scores.get("intervals") or {}
        x, y = e.scores["mean_tokens"], e.scores["overall"]
        xe = iv.get("mean_tokens") or [x, x]
        ye = iv.get("overall") or [y, y]
        ax.errorbar([x], [y], xerr=[[x - xe[0]], [xe[1] - x]], yerr=[[y - ye[0]], [ye[1] - y]], fmt="o", capsize=3, label=e.label)
        ax.annotate(e.label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    xs = [e.scores["mean_tokens"] for e in evals if e.scores.get("mean_tokens")]
    if xs and max(xs) / max(min(xs), 1e-9) > 5:  # ES is logarithmic in tokens: so is the axis, when the spread is wide
        from matplotlib.ticker import ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("mean completion tokens per problem (ES: fewer is better)")
    ax.set_ylabel("Overall")
    ax.set_title("Overall vs tokens: every evaluated model in this folder")
    ax.grid(alpha=0.3)
    plots["tradeoff"] = ("Overall against mean tokens per problem, every model evaluated in this folder", _png(fig))

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    drawn = False
    for e in evals:
        toks = [p["tokens"] for p in e.preds]
        if toks:
            ax.hist(toks, bins=30, alpha=0.55, label=f"{e.label} (mean {sum(toks) / len(toks):.0f})")
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no predictions.jsonl found", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("completion tokens per problem")
    ax.set_ylabel("problems")
    ax.set_title("Tokens spent per problem (ES: fewer is better)")
    if drawn:
        ax.legend(fontsize=8)
    plots["tokens"] = ("Completion tokens per problem", _png(fig))

    with tempfile.TemporaryDirectory() as tmp:
        png = plot_loss_curve(root / "train", Path(tmp) / "loss.png")
        if png is not None:
            plots["loss"] = ("Training loss (train and held-out)", png.read_bytes())
    return plots


# ---- markdown pieces ----------------------------------------------------------------------------------


def _cell(x: Any) -> str:
    s = str(x).replace("\r", "").replace("\n", " ")
    return html.escape(s, quote=False).replace("|", "\\|")


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(_cell(h) for h in head) + " |", "|" + "---|" * len(head)] + \
           ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]


def _with_ci(s: dict[str, Any], k: str) -> str:
    v = s.get(k)
    if v is None:
        return "n/a (size unknown)" if k == "MLS" and "MLS" in s else "n/a"
    iv = (s.get("intervals") or {}).get(k)
    if iv and k != "MLS":
        return f"{v:.1f} [{iv[0]:.1f}, {iv[1]:.1f}]"
    return f"{v:.1f}"


def _score_rows(entries: list[tuple[str, dict[str, Any]]]) -> list[list[Any]]:
    rows = []
    for name, s in entries:
        if not s.get("n"):
            continue
        miss = s.get("misses") or {}
        n_miss = sum(v for k, v in miss.items() if k != "examples" and isinstance(v, int))
        rows.append([name, _with_ci(s, "AS"), _with_ci(s, "CQS"), _with_ci(s, "ES"), _with_ci(s, "MLS"),
                     _with_ci(s, "overall") + ("" if s.get("MLS") is not None or "MLS" not in s else " (AS, CQS, ES)"),
                     f"{s['mean_tokens']:.0f}", "unknown" if s.get("model_bytes") is None else f"{s['model_bytes'] / 1e6:.1f}", s["n"],
                     n_miss if miss else "-"])
    return rows


def _steps_ok(s: dict[str, Any]) -> str:
    """Share of checked ``a op b = c`` steps that hold, or n/a when the chains had none."""
    v = s.get("step_accuracy")
    return "n/a" if v is None else f"{v:.1f}"


def _fence(text: str) -> list[str]:
    """A fenced block that the text cannot close (its fence is longer than any backtick run inside)."""
    ticks = "`" * max(3, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return [ticks + "text", text, ticks]


def _clip(text: str, n: int = OUTPUT_CHARS) -> str:
    if len(text) <= n:
        return text
    return f"{text[: n // 2]}\n[... {len(text) - n} characters not shown ...]\n{text[-n // 2:]}"


def worst_failures(preds: list[dict[str, Any]], n: int = WORST_N) -> list[dict[str, Any]]:
    """Wrong answers, worst first: lowest CQS, then most tokens."""
    wrong = [p for p in preds if not p.get("correct")]

    def key(p):
        c = (p.get("cqs") or {}).get("cqs")
        return (c if c is not None else 101.0, -p.get("tokens", 0), p.get("problem_id", ""))

    return sorted(wrong, key=key)[:n]


def _questions(evals: list[EvalEntry]) -> dict[str, str]:
    """Problem id -> question, from the problems file each eval recorded (when it is still there)."""
    out: dict[str, str] = {}
    for e in evals:
        f = e.scores.get("meta", {}).get("problems_file")
        if f and Path(f).is_file():
            try:
                for line in Path(f).read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        r = json.loads(line)
                        if isinstance(r, dict) and "id" in r:
                            out.setdefault(str(r["id"]), str(r.get("question", "")))
            except (OSError, json.JSONDecodeError):
                continue
    return out


def student_vs_base(evals: list[EvalEntry]) -> dict[str, Any] | None:
    """The paired difference student - base (B - A) of every score with its interval, by the one bootstrap
    (:func:`mathdistill.scores.paired_bootstrap`, the student's score settings), over the problems both were
    scored on; None without both models' predictions of the same problems."""
    from .scores import ScoreConfig, paired_bootstrap

    by = {e.label: e for e in evals}
    if "base" not in by or "student" not in by or not by["base"].preds or not by["student"].preds:
        return None
    a = {p["problem_id"]: p for p in by["base"].preds}
    b = {p["problem_id"]: p for p in by["student"].preds}
    ids = [i for i in b if i in a]
    if not ids or len(ids) != len(a) or len(ids) != len(b):
        return None
    cfg = ScoreConfig.model_validate(by["student"].scores.get("meta", {}).get("config", {}).get("score", {}))
    diff = paired_bootstrap([a[i] for i in ids], [b[i] for i in ids], by["base"].scores.get("model_bytes"),
                            by["student"].scores.get("model_bytes"), cfg)
    return {"n": len(ids), "diff": diff, "samples": cfg.bootstrap_samples, "confidence": cfg.confidence,
            "seed": cfg.bootstrap_seed}


def _student_vs_base(evals: list[EvalEntry]) -> list[str]:
    r = student_vs_base(evals)
    if r is None:
        return []
    d = r["diff"]
    ov = d["overall"]
    lo, hi = ov["ci"] or [None, None]
    verdict = ("beats" if lo is not None and lo > 0 else "is worse than" if hi is not None and hi < 0
               else "is not distinguishable from")
    ci = lambda k: f"{d[k]['diff']:+.1f} [{d[k]['ci'][0]:+.1f}, {d[k]['ci'][1]:+.1f}]" if d[k]["ci"] else f"{d[k]['diff']:+.1f} [n/a]"  # noqa: E731
    conf = int(round(100 * r["confidence"]))
    return [f"**The student {verdict} the base model: Overall {ov['B']:.1f} vs {ov['A']:.1f}, student - base "
            f"{ci('overall')}; AS {ci('AS')}** ({conf}% paired percentile bootstrap over the same {r['n']} problems, "
            f"{r['samples']} resamples, seed {r['seed']}; \"beats\" only when the whole interval is above 0).", "",
            "| student - base | AS | CQS | ES | MLS | Overall |",
            "|---|---|---|---|---|---|",
            "| difference [interval] | " + " | ".join(ci(k) if d[k]["diff"] is not None else "n/a"
                                                     for k in ("AS", "CQS", "ES", "MLS", "overall")) + " |", ""]


def _doc(root: Path, evals: list[EvalEntry], run_scores: dict[str, Any] | None, plots: dict[str, tuple[str, bytes]]) -> list[str]:
    kind = evals[0].scores.get("cqs_kind", "proxy")
    is_run = run_scores is not None and any(k in run_scores for k in ("base", "student"))
    title = "mathdistill run report" if is_run else "mathdistill eval report"
    lines = [f"# {title}", ""]
    ts = read_json(root / "train" / "train_summary.json") if (root / "train" / "train_summary.json").is_file() else None
    if ts:
        c = ts["config"]
        lines += [f"Training recipe: **{ts['recipe']}** (lr {c['learning_rate']}, epochs {c['epochs']}, LoRA r {c['lora_r']}, "
                  f"alpha {c['lora_alpha']}, dropout {c['lora_dropout']}, target {c['target_modules']}); "
                  f"{ts['rows']} rows, {ts['steps']} steps, {ts['wall_s']} s, {ts['tokens_per_s']} tokens/s.", ""]
    lines += _student_vs_base(evals)
    lines += [f"CQS here is the **{kind}**" + (" (offline: arithmetic steps that check out, answer consistent with the last "
              "step, steps present, no repetition, same language; not an LLM judge)." if kind == "proxy" else
              f" (an LLM judge on the rubric {evals[0].scores.get('meta', {}).get('cqs', {}).get('rubric', '?')}).")]
    im = evals[0].scores.get("interval_method") or {}
    if im:
        lines += ["", f"Each score is shown as value [{int(round(100 * im.get('confidence', 0.95)))}% interval]: a {im.get('kind')}, "
                  f"{im.get('samples')} resamples (seed {im.get('seed')}). MLS does not depend on the problems."]
    if any("MLS" in e.scores and e.scores["MLS"] is None for e in evals):
        lines += ["", "MLS n/a (size unknown): the model size was not given (`--model-bytes N`, or `--model` for the model "
                  "that made the predictions), so that model's Overall is over AS, CQS and ES with their weights renormalised "
                  "to sum to 1; it is not comparable with a four-term Overall."]
    head = ["model", "AS", _cqs_label(kind), "ES", "MLS", "Overall", "tokens/problem", "MB", "n", "misses"]
    lines += ["", "## Scores", ""] + _table(head, _score_rows([(e.label, e.scores) for e in evals]))
    fams = sorted(set().union(*(e.scores.get("by_family", {}).keys() for e in evals)))
    if len(fams) > 1 or (fams and len(evals) > 1):
        lines += ["", "## Scores by family"]
        for f in fams:
            fam = [(e.label, s) for e in evals if (s := e.scores.get("by_family", {}).get(f)) and s.get("n")]
            lines += ["", f"### {f}", ""] + _table(head[:-1] + ["steps ok %"],
                                                   [r[:-1] + [_steps_ok(s)] for r, (_, s) in zip(_score_rows(fam), fam)])
    comps = [(e.label, e.scores.get("cqs_components") or {}) for e in evals]
    names = sorted(set().union(*(c.keys() for _, c in comps)))
    if names:
        lines += ["", f"## {_cqs_label(kind)} components (0-100)", ""] + _table(
            ["model"] + names, [[lab] + [f"{c[k]:.1f}" if isinstance(c.get(k), (int, float)) else "n/a" for k in names] for lab, c in comps])
    steps = [f"{e.label} {e.scores['step_accuracy']:.1f}%" for e in evals if e.scores.get("step_accuracy") is not None]
    if steps:
        lines += ["", "Arithmetic steps that check out (share of `a op b = c` steps): " + ", ".join(steps)]
    reasons = ["prompt_too_long", "empty_output", "no_stop", "error", "missing_prediction", "no_answer"]
    if any(e.scores.get("misses") for e in evals):
        lines += ["", "## Misses by reason", "", "Wrong answers with a cause other than a wrong number; each scores as a miss.", ""]
        lines += _table(["model"] + reasons + ["wrong number"], [
            [e.label] + [(e.scores.get("misses") or {}).get(r, 0) for r in reasons]
            + [e.scores["n"] - round(e.scores["AS"] * e.scores["n"] / 100) - sum((e.scores.get("misses") or {}).get(r, 0) for r in reasons)]
            for e in evals])
    cr = root / "curate" / "curate_report.json"
    if cr.is_file():
        c = read_json(cr)
        lines += ["", "## Data", "", f"{c['rows_in']} traces in, {c['rows_out']} training rows out; "
                  + "; ".join(f"{s['step']} removed {s['removed']}" for s in c["steps"]) + "."]
    table = export_table(root)
    lines += ["", *table] if table else []
    lines += ["", "## Plots", ""]
    for name, (caption, _) in plots.items():
        lines += [f"![{caption}](IMG:{name})", ""]
    questions = _questions(evals)
    for e in evals:
        worst = worst_failures(e.preds)
        if not e.preds:
            continue
        lines += ["", f"## Worst {len(worst)} failures: {e.label}", "",
                  "Wrong answers, lowest CQS first (then most tokens)."]
        for i, p in enumerate(worst, 1):
            c = (p.get("cqs") or {})
            cq = "n/a" if c.get("cqs") is None else f"{c['cqs']:.0f}"
            lines += ["", f"### {i}. {p['problem_id']} ({p.get('source', '')})", "",
                      f"reference `{p.get('reference')}`, extracted `{p.get('extracted_answer')}`, finish `{p.get('finish_reason')}`, "
                      f"{p.get('tokens')} tokens, {_cqs_label(c.get('kind', kind))} {cq}"]
            if questions.get(p["problem_id"]):
                lines += ["", "> " + _cell(questions[p["problem_id"]])]
            lines += [""] + _fence(_clip(p.get("output") or "(empty output)"))
    meta = evals[0].scores.get("meta", {})
    if meta:
        lines += ["", "## Reproducibility", ""]
        for e in evals:
            m = e.scores.get("meta", {})
            lines += [f"- {_cell(e.label)}: model `{m.get('model')}`" + (f" + adapter `{m.get('adapter')}`" if m.get("adapter") else "")
                      + f", {m.get('source', 'generated')}, backend `{m.get('backend')}`, sampling `{json.dumps(m.get('sampling'))}`, "
                      f"limit {m.get('limit')}, problems `{m.get('problems_file')}` (ids sha256 `{str(m.get('problem_ids_sha256', ''))[:16]}`)"]
        lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())]
    return lines


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:.6em;overflow-x:auto;white-space:pre-wrap;font-size:13px}
code{background:#f3f3f3;padding:0 .2em}blockquote{color:#555;border-left:3px solid #ccc;margin:0;padding-left:1em}"""


def _html(title: str, md_text: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md_text)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{_CSS}</style></head>\n"
            f"<body>\n{body}</body></html>\n")


def report(run_dir: str | Path) -> Path:
    """Write ``report.md`` (+ PNG plots) and ``report.html`` (self-contained) for an eval folder, a run folder
    or a folder of eval folders; returns the path of ``report.md``."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"report: {root} is not a folder; pass a run folder or an eval folder")
    evals = collect_evals(root)
    if not evals:
        raise UserError(f"report: no scores.json with scores in {root} or its subfolders; run `mathdistill eval` or `run` first")
    run_scores = read_json(root / "scores.json") if (root / "scores.json").is_file() else None
    plots = _plots(root, evals)
    lines = _doc(root, evals, run_scores, plots)
    md = "\n".join(lines) + "\n"
    for name, (_, png) in plots.items():
        (root / f"{name}.png").write_bytes(png)
    out = root / "report.md"
    md_file = md
    md_html = md
    for name, (_, png) in plots.items():
        md_file = md_file.replace(f"(IMG:{name})", f"({name}.png)")
        md_html = md_html.replace(f"(IMG:{name})", f"(data:image/png;base64,{base64.b64encode(png).decode()})")
    out.write_text(md_file, encoding="utf-8")
    (root / "report.html").write_text(_html(lines[0].lstrip("# "), md_html), encoding="utf-8")
    return out
