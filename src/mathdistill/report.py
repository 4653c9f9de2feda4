"""Stage ``report``: ``report.md`` and PNG plots for a run folder (scores base vs student, token
histograms, the training loss curve)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .io import read_json

SCORE_KEYS = ("AS", "CQS", "ES", "MLS", "overall")


def _plots(run: Path, scores: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    models = [k for k in ("base", "student") if k in scores]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(len(models), 1)
    for j, m in enumerate(models):
        vals = [scores[m][k] for k in SCORE_KEYS]
        xs = [i + j * width for i in range(len(SCORE_KEYS))]
        bars = ax.bar(xs, vals, width, label=m)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(SCORE_KEYS))],
                  ["AS", "CQS (proxy)" if scores[models[0]].get("cqs_kind") == "proxy" else "CQS", "ES", "MLS", "Overall"])
    ax.set_ylim(0, 105)
    ax.set_ylabel("score (0-100)")
    ax.set_title("Held-out eval: base vs distilled student")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run / "scores.png", dpi=120)
    plt.close(fig)
    made.append("scores.png")

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for m in models:
        p = run / "eval" / m / "predictions.jsonl"
        if p.is_file():
            toks = [json.loads(x)["tokens"] for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
            ax.hist(toks, bins=30, alpha=0.6, label=f"{m} (mean {sum(toks) / max(len(toks), 1):.0f})")
    ax.set_xlabel("completion tokens per problem")
    ax.set_ylabel("problems")
    ax.set_title("Tokens spent per problem (ES: fewer is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run / "tokens.png", dpi=120)
    plt.close(fig)
    made.append("tokens.png")

    from .train import plot_loss_curve  # train and held-out loss, from train/train_log.jsonl

    if plot_loss_curve(run / "train", run / "loss.png"):
        made.append("loss.png")
    return made


def _row(name: str, s: dict[str, Any]) -> str:
    return (f"| {name} | {s['AS']:.1f} | {s['CQS']:.1f} | {s['ES']:.1f} | {s['MLS']:.1f} | **{s['overall']:.1f}** "
            f"| {s['mean_tokens']:.0f} | {s['model_bytes'] / 1e6:.1f} | {s['n']} |")


def report(run_dir: str | Path) -> Path:
    """Write ``report.md`` (and plots) for a run folder that has ``scores.json``."""
    run = Path(run_dir)
    scores = read_json(run / "scores.json")
    plots = _plots(run, scores)
    models = [k for k in ("base", "student") if k in scores]
    kind = scores[models[0]].get("cqs_kind", "proxy")
    lines = ["# mathdistill run report", ""]
    train_sum = run / "train" / "train_summary.json"
    ts = read_json(train_sum) if train_sum.is_file() else None
    if ts:
        c = ts["config"]
        lines += [f"Training recipe: **{ts['recipe']}** (lr {c['learning_rate']}, epochs {c['epochs']}, LoRA r {c['lora_r']}, "
                  f"alpha {c['lora_alpha']}, dropout {c['lora_dropout']}, target {c['target_modules']}); "
                  f"{ts['rows']} rows, {ts['steps']} steps, {ts['wall_s']} s, {ts['tokens_per_s']} tokens/s.", ""]
    if "base" in scores and "student" in scores:
        d = scores["student"]["overall"] - scores["base"]["overall"]
        verdict = "beats" if d > 0 else "does not beat"
        lines += [f"**The student {verdict} the base model: Overall {scores['student']['overall']:.1f} vs "
                  f"{scores['base']['overall']:.1f} ({d:+.1f}).**", ""]
    lines += [f"CQS here is the **{kind}**" + (" (offline: arithmetic steps that check out, answer consistent with the last "
              "step, steps present, no repetition, same language; not an LLM judge)" if kind == "proxy" else ""), "",
              "## Scores (held-out eval)", "",
              "| model | AS | CQS | ES | MLS | Overall | tokens/problem | MB | n |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(m, scores[m]) for m in models]
    fams = sorted(set().union(*(scores[m].get("by_family", {}).keys() for m in models)))
    for f in fams:
        lines += ["", f"### {f}", "", "| model | AS | CQS | ES | MLS | Overall | tokens/problem | MB | n |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [_row(m, scores[m]["by_family"][f]) for m in models if f in scores[m].get("by_family", {})]
    if any(scores[m].get("step_accuracy") is not None for m in models):
        lines += ["", "Arithmetic steps that check out (share of `a op b = c` steps): "
                  + ", ".join(f"{m} {scores[m]['step_accuracy']}%" for m in models if scores[m].get('step_accuracy') is not None)]
    cr = run / "curate" / "curate_report.json"
    if cr.is_file():
        c = read_json(cr)
        lines += ["", "## Data", "", f"{c['rows_in']} traces in, {c['rows_out']} training rows out; "
                  + "; ".join(f"{s['step']} removed {s['removed']}" for s in c["steps"]) + "."]
    from .export import export_table  # format, bytes, MLS, AS, Overall of each `mathdistill export`

    table = export_table(run)
    lines += ["", *table] if table else []
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    meta = scores[models[0]].get("meta", {})
    if meta:
        lines += ["", "## Reproducibility", "", f"Sampling: `{json.dumps(meta.get('sampling'))}`; "
                  f"problem ids sha256 `{meta.get('problem_ids_sha256', '')[:16]}`; versions: "
                  + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())]
    out = run / "report.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out
