"""Training throughput on the real student (SmolLM2-135M-Instruct, LoRA all-linear r 16, fp32, CPU).

One run measures, on the same rows in the same order (the default preset's training rows, reference chains):
  naive    padded batches in random order (pad to the longest row of each micro-batch)
  grouped  padded batches of similar length (group_by_length)
  packed   the same random batches, each packed into max_length sequences (no pad tokens, block-diagonal mask)
and this machine's fp32 matmul peak (torch.mm, best of a few shapes), so throughput is also a share of it.

FLOP model (stated, as the issue asks): training FLOPs = 6 x N x T, N = every parameter of the student
(trainable or not, embeddings counted once), T = real (non-pad) tokens. With a frozen base and the LM head
applied only at answer positions, the work actually done is nearer 4 x N_no_embed x T + 6 x N_embed x T_answer;
that share is printed too.

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_train.py            # ~5 min on 2 quiet cores
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def matmul_peak_gflops(seconds: float = 1.5) -> tuple[float, str]:
    """Best fp32 GFLOP/s of torch.mm over shapes near the training matmuls and a large square one."""
    import torch

    best, shape = 0.0, ""
    for m, k, n in ((2048, 576, 1536), (2048, 1536, 576), (2048, 2048, 2048), (4096, 576, 576)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b  # warm-up
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
        g = 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9
        if g > best:
            best, shape = g, f"{m}x{k}x{n}"
    return best, shape


def make_dataset(folder: Path, preset: str) -> Path:
    from mathdistill.config import build, read_preset
    from mathdistill.curate import CurateConfig, curate
    from mathdistill.generate import GenerateConfig, generate
    from mathdistill.problems import ProblemsConfig, problems

    p = read_preset(preset)
    problems(build(ProblemsConfig, p.get("problems", {})), folder / "problems")
    generate(build(GenerateConfig, {**p.get("generate", {}), "backend": "reference"}), folder / "problems" / "train.jsonl", folder / "gen")
    curate(build(CurateConfig, p.get("curate", {})), folder / "gen" / "traces.jsonl", [folder / "problems" / "train.jsonl"], folder / "cur")
    return folder / "cur" / "dataset.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--preset", default="default", help="preset whose problems make the training rows")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    ap.add_argument("--repeats", type=int, default=2, choices=(1, 2), help="runs per mode (2: A B C C B A order)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()

    from mathdistill.models import load, resolve
    from mathdistill.train import TrainConfig, train

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    ds = make_dataset(tmp, a.preset)
    rows = json.loads(ds.read_text())
    model, _ = load(resolve(a.model))
    n_all = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    del model
    peak, shape = matmul_peak_gflops()
    print(f"{len(rows)} training rows; {a.model}: {n_all / 1e6:.1f}M params ({n_embed / 1e6:.1f}M embedding); "
          f"fp32 matmul peak {peak:.1f} GFLOP/s (torch.mm {shape})", flush=True)
    modes = {"naive": dict(packing=False, group_by_length=False),
             "grouped": dict(packing=False, group_by_length=True),
             "packed": dict(packing=True, group_by_length=False)}
    # A B C C B A: each mode runs twice, symmetric in time, so a drift in the machine's load hits all alike
    order = list(modes) + list(modes)[::-1] if a.repeats == 2 else list(modes)
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for i, name in enumerate(order):
        cfg = TrainConfig(base_model=a.model, max_steps=a.steps, batch_size=a.batch_size, save_steps=0,
                          heldout_fraction=0.0, warmup_ratio=0.0, seed=1, **modes[name])
        s = train(cfg, ds, tmp / f"train-{name}-{i}")
        log = [json.loads(x) for x in (tmp / f"train-{name}-{i}" / "train_log.jsonl").read_text().splitlines()]
        runs[name].append({"tokens_per_s": s["tokens_per_s"], "pad_share": s["pad_share"], "first_loss": log[0]["loss"]})
        print(f"{name:8s} run {len(runs[name])}: {s['tokens_per_s']:.1f} tokens/s", flush=True)
    peak2, shape2 = matmul_peak_gflops()
    print(f"fp32 matmul peak again after the runs: {peak2:.1f} GFLOP/s (torch.mm {shape2})")
    peak = max(peak, peak2)
    res = {}
    for name, rs in runs.items():
        tps = sum(r["tokens_per_s"] for r in rs) / len(rs)
        res[name] = {"tokens_per_s": round(tps, 2), "runs": rs, "pad_share": rs[0]["pad_share"],
                     "first_loss": rs[0]["first_loss"], "mfu_6N": 6 * n_all * tps / 1e9 / peak}
        print(f"{name:8s} {tps:7.1f} tokens/s  pad share {rs[0]['pad_share']:.1%}  first-step loss {rs[0]['first_loss']:.4f}  "
              f"6N FLOPs: {6 * n_all * tps / 1e9:.1f} GFLOP/s = {res[name]['mfu_6N']:.1%} of peak {peak:.1f}", flush=True)
    # the share of the matmul work really done (frozen base: no weight gradients; LM head at answer tokens only)
    from mathdistill.models import load_tokenizer
    from mathdistill.train import tokenize_example

    tok = load_tokenizer(resolve(a.model))
    ans = tot = 0
    for r in rows:
        ids, labels = tokenize_example(tok, r["instruction"], r["input"], r["output"])
        tot += len(ids)
        ans += sum(x != -100 for x in labels)
    real_per_token = 4 * (n_all - n_embed) + 6 * n_embed * ans / tot
    speed = res["packed"]["tokens_per_s"] / res["naive"]["tokens_per_s"]
    print(f"packed vs naive padded: {speed:.2f}x tokens/s (goal >= 1.5x); grouped vs naive "
          f"{res['grouped']['tokens_per_s'] / res['naive']['tokens_per_s']:.2f}x")
    print(f"packed: {res['packed']['mfu_6N']:.1%} of the fp32 matmul peak by the 6N FLOP model (goal >= 50%); "
          f"{real_per_token * res['packed']['tokens_per_s'] / 1e9 / peak:.1%} counting the work actually done "
          f"({real_per_token / n_all:.2f} N FLOPs per token: 4 x non-embedding params + 6 x embedding x answer share {ans / tot:.2f})")
    print(f"same loss? first-step loss naive {res['naive']['first_loss']:.5f} vs packed {res['packed']['first_loss']:.5f}")
    if a.json:
        a.json.write_text(json.dumps({"peak_gflops": peak, "params": n_all, "modes": res, "packed_vs_naive": speed}, indent=2))


if __name__ == "__main__":
    main()
