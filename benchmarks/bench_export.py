"""The export table on the real student: bytes on disk, MLS, AS and Overall on the smoke eval set, per format.

One run: the smoke problems (`mathdistill problems --preset smoke`), reference chains, the smoke recipe's LoRA
student (SmolLM2-135M-Instruct), then every export format, each scored by the same `evaluate` that
`mathdistill eval --preset smoke --model EXPORT` runs. The baseline row is the student as the run ships it
(the base GGUF + the LoRA adapter). With llama-cpp-python installed, each GGUF is also scored on llama.cpp
(`--backend llamacpp`): the AS the shipped file gets where it is actually run.

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_export.py            # ~8 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

FORMATS = [("merged-float32", {"format": "merged", "dtype": "float32"}),
           ("merged-bfloat16", {"format": "merged", "dtype": "bfloat16"}),
           ("int8", {"format": "int8"}),
           ("gguf-f16", {"format": "gguf", "gguf_type": "f16"}),
           ("gguf-q8_0", {"format": "gguf", "gguf_type": "q8_0"}),
           ("gguf-q4_0", {"format": "gguf", "gguf_type": "q4_0"})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run folder here (default: a temp folder, removed)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()

    from mathdistill.config import build, read_preset
    from mathdistill.curate import CurateConfig, curate
    from mathdistill.evaluate import EvalConfig, evaluate
    from mathdistill.export import ExportConfig, export
    from mathdistill.plots import export_table
    from mathdistill.generate import GenerateConfig, generate
    from mathdistill import llamacpp
    from mathdistill.models import home
    from mathdistill.problems import ProblemsConfig, problems
    from mathdistill.train import TrainConfig, train

    run = a.keep or Path(tempfile.mkdtemp(prefix="bench-export-"))
    p = read_preset("smoke")
    cached_before = set((home() / "models").glob("*")) if (home() / "models").is_dir() else set()
    problems(build(ProblemsConfig, p["problems"]), run / "problems")
    generate(build(GenerateConfig, p.get("generate", {})), run / "problems" / "train.jsonl", run / "generate")
    curate(build(CurateConfig, p.get("curate", {})), run / "generate" / "traces.jsonl", [run / "problems" / "train.jsonl"], run / "curate")
    tcfg = build(TrainConfig, {**p["train"], "base_model": a.model, "save_steps": 0})
    train(tcfg, run / "curate" / "dataset.json", run / "train")
    ecfg = build(EvalConfig, p["eval"])
    eval_file = run / "problems" / "eval.jsonl"
    rows = []

    def score(label: str, model: str, out: Path, t_export: float | None) -> None:
        t0 = time.monotonic()
        s = evaluate(ecfg, eval_file, out, model=model, label=label)
        row = {"label": label, "bytes": s["model_bytes"], "MLS": s["MLS"], "AS": s["AS"], "CQS": s["CQS"],
               "ES": s["ES"], "overall": s["overall"], "export_s": t_export, "eval_s": round(time.monotonic() - t0, 1),
               "gen_tokens_per_s": s["meta"]["gen_tokens_per_s"], "AS_llamacpp": None, "llamacpp_tokens_per_s": None}
        if label.startswith("gguf") and llamacpp.available():
            lc = evaluate(ecfg.model_copy(update={"backend": "llamacpp"}), eval_file, out.parent / "eval-llamacpp",
                          model=model, label=f"{label} (llama.cpp)")
            row.update(AS_llamacpp=lc["AS"], llamacpp_tokens_per_s=lc["meta"]["gen_tokens_per_s"])
        rows.append(row)

    score("adapter (base GGUF q4_1 + LoRA)", str(run / "train"), run / "eval" / "student", None)
    for label, opts in FORMATS:
        out = run / "exports" / label
        t0 = time.monotonic()
        export(build(ExportConfig, opts), run / "train", out)
        score(label, str(out), out / "eval", round(time.monotonic() - t0, 1))

    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    print("\n| format | bytes | MB | MLS | AS | AS on llama.cpp | CQS (proxy) | ES | Overall | export s | eval s | "
          "tokens/s transformers | tokens/s llama.cpp |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['bytes']:,} | {r['bytes'] / 1e6:.1f} | {r['MLS']:.1f} | {r['AS']:.1f} | {fmt(r['AS_llamacpp'])} | "
              f"{r['CQS']:.1f} | {r['ES']:.1f} | {r['overall']:.1f} | {r['export_s'] if r['export_s'] is not None else '-'} | "
              f"{r['eval_s']} | {fmt(r['gen_tokens_per_s'])} | {fmt(r['llamacpp_tokens_per_s'])} |")
    print("\nexport table as the run report shows it:\n" + "\n".join(export_table(run)))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))
    # the dequantized copies of our GGUF exports were cached under MATHDISTILL_HOME while scoring: drop them
    for d in set((home() / "models").glob("*")) - cached_before:
        shutil.rmtree(d, ignore_errors=True)
    if not a.keep:
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
