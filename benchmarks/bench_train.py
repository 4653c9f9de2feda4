"""Training throughput on the real student (SmolLM2-135M-Instruct, the default LoRA recipe: r 16, all-linear,
dropout 0.05; fp32, CPU).

One run, one model: the training step mathdistill runs (answer-only loss, backward, AdamW) timed on
  naive    padded batches of 8 rows in random order (pad to the longest row of each micro-batch)
  grouped  padded batches of similar length (transformers' length grouping)
  packed   the naive batches, each packed into max_length sequences (no pad tokens, block-diagonal mask)
interleaved step by step (naive, grouped, packed, naive, ...) so that the other jobs sharing the machine slow
every mode alike; and this machine's fp32 matmul peak (torch.mm, best of a few shapes, before and after), so
throughput is also a share of it.

FLOP model (stated, as the issue asks): training FLOPs = 6 x N x T, N = every parameter of the student
(trainable or not, embeddings counted once), T = real (non-pad) tokens. With a frozen base and the LM head
applied only at answer positions, the work actually done is nearer 4 x N_no_embed x T + 6 x N_embed x T_answer;
that share is printed too.

    flock /tmp/mathdistill-heavy.lock python benchmarks/bench_train.py            # ~5 min on 2 quiet cores
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
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per mode (after one warm-up step each)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from mathdistill.models import load, resolve
    from mathdistill.train import TrainConfig
    from mathdistill.train_data import Collator, tokenize_example
    from mathdistill.train_losses import answer_only_loss

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    ds = make_dataset(tmp, a.preset)
    rows = json.loads(ds.read_text())
    cfg = TrainConfig(base_model=a.model)  # the default recipe: LoRA r 16, alpha 32, dropout 0.05, all-linear
    model, tok = load(resolve(a.model))
    n_all = sum(p.numel() for p in model.parameters())
    n_embed = model.get_input_embeddings().weight.numel()
    model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                             target_modules=cfg.target_modules, task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate)
    feats = []
    for r in rows:
        ids, labels = tokenize_example(tok, r["instruction"], r["input"], r["output"])
        feats.append({"input_ids": ids, "labels": labels})
    lengths = [len(f["input_ids"]) for f in feats]
    g = torch.Generator().manual_seed(1)
    random_order = torch.randperm(len(feats), generator=g).tolist()
    grouped_order = get_length_grouped_indices(lengths, a.batch_size, generator=torch.Generator().manual_seed(1))
    b = a.batch_size
    n_batches = a.steps + 1
    modes = {"naive": (random_order, Collator(tok.pad_token_id)),            # random batches, padded
             "grouped": (grouped_order, Collator(tok.pad_token_id)),         # similar lengths together, padded
             "packed": (random_order, Collator(tok.pad_token_id, cfg.max_length))}  # the naive batches, packed
    batches = {m: [col([feats[i] for i in order[k * b:(k + 1) * b]]) for k in range(n_batches)] for m, (order, col) in modes.items()}

    peak, shape = matmul_peak_gflops()
    print(f"{len(rows)} training rows; {a.model}: {n_all / 1e6:.1f}M params ({n_embed / 1e6:.1f}M embedding); "
          f"{torch.get_num_threads()} threads; fp32 matmul peak {peak:.1f} GFLOP/s (torch.mm {shape})", flush=True)

    def step(batch) -> float:
        t0 = time.perf_counter()
        n = int((batch["labels"][:, 1:] != -100).sum())
        loss = answer_only_loss(model, batch, n)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    real = {m: [int(x["n_real"]) if "n_real" in x else int(x["attention_mask"].sum()) for x in bs] for m, bs in batches.items()}
    pos = {m: [x["input_ids"].numel() for x in bs] for m, bs in batches.items()}
    times: dict[str, list[float]] = {m: [] for m in modes}
    for k in range(n_batches):  # interleaved step by step, so a change in the machine's load hits every mode alike
        for m in modes:
            dt = step(batches[m][k])
            if k:  # step 0 is the warm-up
                times[m].append(dt)
        if k:
            print("  step " + str(k) + ": " + ", ".join(f"{m} {real[m][k] / times[m][-1]:.1f} tok/s" for m in modes), flush=True)
    peak2, shape2 = matmul_peak_gflops()
    peak = max(peak, peak2)
    print(f"fp32 matmul peak again: {peak2:.1f} GFLOP/s (torch.mm {shape2}); using the best, {peak:.1f}")
    ans = sum(sum(x != -100 for x in f["labels"]) for f in feats)
    real_per_token = 4 * (n_all - n_embed) + 6 * n_embed * ans / sum(lengths)
    res = {}
    for m in modes:
        tps = sum(real[m][1:]) / sum(times[m])
        best = max(r / t for r, t in zip(real[m][1:], times[m]))
        res[m] = {"tokens_per_s": round(tps, 2), "best_step_tokens_per_s": round(best, 2),
                  "pad_share": round(1 - sum(real[m][1:]) / sum(pos[m][1:]), 4), "mfu_6N": 6 * n_all * tps / 1e9 / peak,
                  "positions_per_s": round(sum(pos[m][1:]) / sum(times[m]), 2)}
        print(f"{m:8s} {tps:6.1f} tokens/s (best step {best:.1f})  pad share {res[m]['pad_share']:.1%}  "
              f"{res[m]['positions_per_s']:.1f} positions/s  6N: {6 * n_all * tps / 1e9:.1f} GFLOP/s = {res[m]['mfu_6N']:.1%} of peak")
    speed = res["packed"]["tokens_per_s"] / res["naive"]["tokens_per_s"]
    print(f"packed vs naive padded: {speed:.2f}x tokens/s (goal >= 1.5x); grouped vs naive "
          f"{res['grouped']['tokens_per_s'] / res['naive']['tokens_per_s']:.2f}x")
    print(f"packed: {res['packed']['mfu_6N']:.1%} of the fp32 matmul peak by the 6N FLOP model (goal >= 50%); "
          f"{real_per_token * res['packed']['tokens_per_s'] / 1e9 / peak:.1%} counting the work actually done "
          f"({real_per_token / n_all:.2f} N FLOPs per token: 4 x non-embedding params + 6 x embedding x answer share "
          f"{ans / sum(lengths):.2f})")
    if a.json:
        a.json.write_text(json.dumps({"peak_gflops": peak, "params": n_all, "modes": res, "packed_vs_naive": speed}, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
