"""The curate report: length and agreement summaries, the figure (curate_report.png) and the markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _hist(values: list[float], edges: list[float]) -> list[int]:
    counts = [0] * (len(edges) - 1)
    for v in values:
        for i in range(len(edges) - 1):
            if v < edges[i + 1] or i == len(edges) - 2:
                counts[i] += 1
                break
    return counts


def length_summary(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    s = sorted(values)
    pct = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return {"n": len(s), "mean": round(sum(s) / len(s), 1), "p50": pct(0.5), "p90": pct(0.9), "max": s[-1]}


AGREEMENT_EDGES = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def agreement_report(agreement: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "reference" in agreement:
        a = agreement["reference"]
        out["reference"] = {"problems": a["problems"], "traces": a["traces"], "correct": a["correct"],
                            "share_correct": round(a["correct"] / a["traces"], 4) if a["traces"] else None,
                            "problems_with_a_correct_sample": sum(v > 0 for v in a["values"]),
                            "pass_rate_histogram": {"edges": AGREEMENT_EDGES, "counts": _hist(a["values"], AGREEMENT_EDGES)}}
    if "vote" in agreement:
        a = agreement["vote"]
        out["majority_vote"] = {"problems": a["problems"], "labelled": a["labelled"],
                                "mean_agreement": round(sum(a["values"]) / len(a["values"]), 4) if a["values"] else None,
                                "agreement_histogram": {"edges": AGREEMENT_EDGES, "counts": _hist(a["values"], AGREEMENT_EDGES)}}
    return out


def plot_lengths(path: Path, report: dict[str, Any], before: list[int], after: list[int], unit: str,
          agreement: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0][0]
    steps = report["steps"]
    names = [s["step"] for s in steps][::-1]
    vals = [s["removed"] for s in steps][::-1]
    if any("repaired" in s for s in steps):  # rows a step changed and kept, beside the rows it removed
        ys = range(len(names))
        bars = ax.barh([y + 0.2 for y in ys], vals, 0.4, color="#c0504d", label="removed")
        ax.bar_label(bars, fontsize=8)
        rep = ax.barh([y - 0.2 for y in ys], [s.get("repaired", 0) for s in steps][::-1], 0.4, color="#4f9a4f",
                      label="repaired (kept)")
        ax.bar_label(rep, labels=[f"{s['repaired']} ({s['steps_repaired']} steps)" if "repaired" in s else ""
                                  for s in steps][::-1], fontsize=8)
        ax.set_yticks(list(ys), names)
        ax.legend(fontsize=8)
        ax.set_xlabel("rows removed / repaired")
    else:
        bars = ax.barh(names, vals, color="#c0504d")
        ax.bar_label(bars, fontsize=8)
        ax.set_xlabel("rows removed")
    ax.set_title(f"{report['rows_in']} rows in -> {report['rows_out']} rows out")
    ax = axes[0][1]
    hi = max(before + after + [1])
    bins = [hi * i / 40 for i in range(41)]
    if before:
        ax.hist(before, bins=bins, alpha=0.5, label=f"before (n={len(before)}, mean {sum(before) / len(before):.0f})")
    if after:
        ax.hist(after, bins=bins, alpha=0.6, label=f"after (n={len(after)}, mean {sum(after) / len(after):.0f})")
    ax.set_xlabel(f"output length ({unit})")
    ax.set_ylabel("rows")
    ax.set_title("Output length (ES counts student tokens)")
    ax.legend(fontsize=8)
    ax = axes[1][0]
    langs = sorted(set(report["languages_in"]) | set(report["languages"]))
    xs = range(len(langs))
    ax.bar([x - 0.2 for x in xs], [report["languages_in"].get(k, 0) for k in langs], 0.4, label="in")
    ax.bar([x + 0.2 for x in xs], [report["languages"].get(k, 0) for k in langs], 0.4, label="out")
    ax.set_xticks(list(xs), langs)
    ax.set_ylabel("rows")
    ax.set_title("Language of the question")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    series = [(k, agreement[k]["values"]) for k, lab in (("reference", "pass rate vs reference"),
                                                          ("vote", "majority agreement")) if k in agreement]
    for k, values in series:
        ax.hist(values, bins=AGREEMENT_EDGES, alpha=0.6,
                label=("share of samples correct (vs reference)" if k == "reference" else "majority-vote agreement")
                + f", {len(values)} problems")
    if not series:
        ax.text(0.5, 0.5, "no answer checks ran\n(add verify_answer or majority_vote)", ha="center", va="center")
    else:
        ax.legend(fontsize=8)
    ax.set_xlabel("share of a problem's samples")
    ax.set_ylabel("problems")
    ax.set_title("Answer agreement per problem")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def report_markdown(report: dict[str, Any], plot: str | None) -> str:
    L = ["# Curate report", "",
         f"**{report['rows_in']} traces in, {report['rows_out']} training rows out** "
         f"(formats: {', '.join(report['files'].values()) or 'none'}).", "",
         "## Removed per step", "", "| step | in | out | removed |", "|---|---|---|---|"]
    L += [f"| {s['step']} | {s['in']} | {s['out']} | {s['removed']} |" for s in report["steps"]]
    repaired = [s for s in report["steps"] if "repaired" in s]
    if repaired:
        L += ["", "## Repaired per step (kept, changed)", "", "| step | rows repaired | steps repaired |", "|---|---|---|"]
        L += [f"| {s['step']} | {s['repaired']} | {s['steps_repaired']} |" for s in repaired]
    if report.get("flagged", {}).get("truncated_kept"):
        L += ["", f"**Flagged: {report['flagged']['truncated_kept']} training rows come from traces the teacher's token "
              "limit cut off** (finish_reason: length); add `drop_truncated` to the steps to drop them.", ""]
    counts = report["counts"]["counts"]
    if counts:
        L += ["", "## Reasons (with the first few file:line)", ""]
        for reason, n in counts.items():
            L.append(f"- `{reason}`: {n}")
            L += [f"    - `{w}`" for w in report["counts"]["examples"].get(reason, [])]
    lb, la = report["lengths"]["before"], report["lengths"]["after"]
    unit = report["lengths"]["unit"]
    L += ["", f"## Output length ({unit})", "", "| | rows | mean | p50 | p90 | max |", "|---|---|---|---|---|---|"]
    for name, s in (("before", lb), ("after", la)):
        L.append(f"| {name} | {s['n']} | {s.get('mean', '-')} | {s.get('p50', '-')} | {s.get('p90', '-')} | {s.get('max', '-')} |")
    L += ["", "## Languages", "", "| lang | in | out |", "|---|---|---|"]
    for k in sorted(set(report["languages_in"]) | set(report["languages"])):
        L.append(f"| {k} | {report['languages_in'].get(k, 0)} | {report['languages'].get(k, 0)} |")
    ag = report["agreement"]
    L += ["", "## Answer agreement", ""]
    if "reference" in ag:
        a = ag["reference"]
        L.append(f"- vs reference: {a['correct']} of {a['traces']} samples correct ({a['share_correct']}); "
                 f"{a['problems_with_a_correct_sample']} of {a['problems']} problems have at least one correct sample; "
                 f"pass-rate histogram {a['pass_rate_histogram']['counts']} over edges {AGREEMENT_EDGES}")
    if "majority_vote" in ag:
        a = ag["majority_vote"]
        L.append(f"- majority vote: {a['labelled']} of {a['problems']} problems without a reference labelled; "
                 f"mean agreement {a['mean_agreement']}; histogram {a['agreement_histogram']['counts']}")
    if not ag:
        L.append("- not measured (verify_answer and majority_vote did not run)")
    g = report["grader"]
    if g["total"]:
        L.append(f"- grader: {g['total']} comparisons, {g['fast_share']:.1%} decided by the exact fast path "
                 f"({g['fast_string']} string, {g['fast_number']} number), {g['math_verify']} by math-verify, "
                 f"{g['errors']} errors")
    if plot:
        L += ["", f"![curate report]({plot})"]
    return "\n".join(L) + "\n"
