"""Stage ``train``: fine-tune the student on curated rows (PEFT LoRA or full fine-tuning on the transformers
Trainer), by SFT on the teacher's answers or by logit distillation from a local teacher (``method: kd``,
see ``distill.py``).

Each row is rendered with the student's own chat template (``system`` = instruction, ``user`` = input,
``assistant`` = output) and the loss is taken on the answer tokens only. The LM head is applied only at
those positions (a forward pre-hook hands it the answer positions, inside the model's own forward, so DDP,
ZeRO and FSDP see an ordinary forward): on a 49k vocabulary that is the difference between ~18 and ~90
tokens/s on 2 CPU cores, for the same loss.

Throughput: with ``packing`` the rows of each micro-batch are packed into as few sequences of ``max_length``
tokens as fit, each row keeping its own position ids (0, 1, ...) and no attention mask, so transformers'
mask builder gives a block-diagonal causal mask (no attention across rows). A micro-batch holds the same rows
as without packing, so steps, learning-rate schedule and loss are those of padded batches; only the pad
tokens are gone. ``group_by_length`` batches rows of similar length together.

Crash safety: every ``save_steps`` optimizer steps a checkpoint (adapter or weights, optimizer, scheduler, RNG,
trainer state, resolved config) is written under a temporary name and renamed into ``checkpoints/``;
``resume`` continues from the newest one with the same data order, optimizer and scheduler state.

Modules: ``train_config`` (``TrainConfig``), ``train_data`` (tokenize, pack, collate, held-out split),
``train_losses`` (answer-only CE and KD), ``train_fit`` (the memory check), ``train_trainer`` (the Trainer
subclass and its callbacks), ``plots.plot_loss_curve``; this module runs them in order.

Presets: ``seed`` reproduces the seed's recipe exactly (lr 8e-5, 3 epochs, r 8, alpha 16, dropout 0.1);
the demo uses ``fast`` (a higher lr so a few hundred rows move the student within minutes).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from .errors import UserError
from .io import read_json, write_json
from .models import load, resolve
from .plots import plot_loss_curve
from .progress import bar, info
from .prompts import alpaca_rows
from .train_config import CHECKPOINTS, RESUME_KEYS, TrainConfig
from .train_data import Collator, featurize, split_heldout
from .train_fit import available_bytes, check_fits, device_and_dtype, estimate_memory

__all__ = ["TrainConfig", "train"]


def _load_teacher(cfg: TrainConfig, tok, dtype: str):
    from .distill import check_same_vocabulary

    if not cfg.teacher:
        raise UserError("train: method kd needs a teacher: --teacher PATH (a local model sharing the student's tokenizer)")
    tspec = resolve(cfg.teacher)
    from .models import load_tokenizer

    ttok = load_tokenizer(tspec, cfg.trust_remote_code)
    check_same_vocabulary(tok, ttok, cfg.base_model, cfg.teacher)
    teacher, _ = load(tspec, dtype=dtype, trust_remote_code=cfg.trust_remote_code, merge=True)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def train(cfg: TrainConfig, dataset_path: str | Path, out_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Fine-tune ``cfg.base_model`` on an Alpaca dataset; write the adapter (or weights), ``student.json``,
    ``train_log.jsonl``, ``train_summary.json`` and ``loss.png`` to ``out_dir``. With ``resume``, continue from
    the newest checkpoint in ``out_dir/checkpoints``."""
    import torch
    from datasets import Dataset
    from transformers import TrainingArguments, set_seed

    from . import train_trainer as tt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_root = out / CHECKPOINTS
    last = None
    if resume:
        found = tt.checkpoints(ckpt_root)
        if not found:
            raise UserError(f"train --resume: no checkpoint in {ckpt_root} (train without --resume, or set save_steps > 0)")
        last = found[-1]
        saved = read_json(last / "mathdistill_config.json")
        changed = [k for k in RESUME_KEYS if saved.get(k) != cfg.model_dump(mode="json").get(k)]
        if changed:
            raise UserError(f"train --resume: {last} was written with other settings ({', '.join(f'{k}: {saved.get(k)!r}' for k in changed)}); "
                            "resume with the same config, or start a new --out folder")
    if cfg.method == "kd" and not cfg.teacher:
        raise UserError("train: method kd needs a teacher: --teacher PATH (a local model sharing the student's tokenizer)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device, dtype = device_and_dtype(cfg)
    rows = alpaca_rows(read_json(dataset_path), dataset_path)  # a LLaMA-Factory-style file: rendered as it renders it
    set_seed(cfg.seed)
    spec = resolve(cfg.base_model)
    # LoRA on a GPU keeps the frozen base in bf16; full fine-tuning keeps fp32 master weights under bf16 autocast
    load_dtype = "bfloat16" if (dtype == "bfloat16" and cfg.finetune == "lora") else "float32"
    model, tok = load(spec, dtype=load_dtype, trust_remote_code=cfg.trust_remote_code)
    model.train()
    teacher = _load_teacher(cfg, tok, load_dtype) if cfg.method == "kd" else None

    feats, tally = featurize(rows, tok, cfg, dataset_path)
    if not feats:
        raise UserError(f"train: no usable rows in {dataset_path} ({'; '.join(tally.lines()[:2])})")
    train_feats, held = split_heldout(feats, cfg.heldout_fraction, cfg.seed)
    packing = cfg.packing and not (cfg.method == "kd" and cfg.kd_on_policy > 0)  # on-policy sampling needs rows
    n_tokens = sum(f["length"] for f in train_feats)
    n_answer = sum(sum(x != -100 for x in f["labels"]) for f in train_feats)
    rows_per_step = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = math.ceil(len(train_feats) / rows_per_step)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    longest = max(f["length"] for f in train_feats)

    if cfg.finetune == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.target_modules, task_type="CAUSAL_LM")
        try:
            model = get_peft_model(model, lora)
        except ValueError as e:
            raise UserError(f"train: target_modules {cfg.target_modules!r}: {str(e).splitlines()[0]}") from None
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_params = sum(p.numel() for p in model.parameters())
    seq = cfg.max_length if packing else longest
    top = sorted((f["length"] for f in train_feats), reverse=True)[: cfg.batch_size]
    ans_top = sorted((sum(x != -100 for x in f["labels"]) for f in train_feats), reverse=True)[: cfg.batch_size]
    est = estimate_memory(model, cfg, sum(top) if packing else longest * len(top), seq, n_trainable, sum(ans_top),
                          dtype, teacher)
    check_fits(est, available_bytes(cfg, device), cfg, device, seq)
    info(f"train: {len(train_feats)} rows (+{len(held)} held out), {n_tokens} tokens ({n_answer} answer tokens) per epoch; "
         f"{total_steps} steps of {cfg.batch_size}x{cfg.grad_accum} rows; {cfg.method} {cfg.finetune} "
         f"({n_trainable / 1e6:.2f}M of {n_params / 1e6:.1f}M weights trained), {dtype} on {device}"
         f"{', packed' if packing else ''}; recipe {cfg.recipe} (lr {cfg.learning_rate}, epochs {cfg.epochs}"
         + (f", r {cfg.lora_r}, alpha {cfg.lora_alpha}, dropout {cfg.lora_dropout}" if cfg.finetune == "lora" else "") + ")"
         + (f"; skipped {tally.total()} ({', '.join(tally.counts)})" if tally.total() else "")
         + (f"; resuming from {last.name}" if last else ""))

    args = TrainingArguments(
        output_dir=str(ckpt_root / tt.STAGING), per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, warmup_steps=math.ceil(cfg.warmup_ratio * total_steps), weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler, logging_steps=1, report_to=[], seed=cfg.seed, data_seed=cfg.seed,
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500,
        save_total_limit=None,
        eval_strategy="epoch" if held else "no", prediction_loss_only=True,
        use_cpu=device == "cpu", bf16=dtype == "bfloat16", disable_tqdm=True, remove_unused_columns=False,
        activation_checkpointing=cfg.gradient_checkpointing,  # transformers 5's name for gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        dataloader_num_workers=0, log_level="warning",
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random", length_column_name="length")
    shutil.rmtree(ckpt_root / tt.STAGING, ignore_errors=True)  # a checkpoint a crash left half-written
    log_path = out / "train_log.jsonl"
    kept = [r for r in tt.read_log(log_path) if last and r.get("step", 0) <= int(last.name[11:])]
    with open(log_path, "w", encoding="utf-8") as fh:  # a resumed run keeps the rows up to its checkpoint
        fh.writelines(json.dumps(r) + "\n" for r in kept)
    collator = Collator(tok.pad_token_id, cfg.max_length if packing else None)
    t0 = time.monotonic()
    with bar("train", total=total_steps, unit="step") as b:
        trainer = tt.DistillTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_feats),
                                    eval_dataset=Dataset.from_list(held) if held else None, data_collator=collator,
                                    callbacks=[tt.RichProgress(b, log_path), tt.AtomicCheckpoints(ckpt_root, cfg)],
                                    cfg=cfg, tok=tok, teacher=teacher)
        if last:
            b.advance(int(last.name[11:]))
        trainer.train(resume_from_checkpoint=str(last) if last else None)
        history = trainer.state.log_history
        if held and not any("eval_loss" in r and r.get("step") == trainer.state.global_step for r in history):
            trainer.evaluate()  # the held-out loss of the final weights, when the last epoch was cut short
    dt = time.monotonic() - t0
    if not trainer.is_world_process_zero():
        return {}
    log_rows = tt.read_log(log_path)
    folder = out / ("adapter" if cfg.finetune == "lora" else "model")
    trainer.save_model(str(folder))
    (folder / "training_args.bin").unlink(missing_ok=True)  # a pickle of TrainingArguments: not shipped
    tok.save_pretrained(str(folder))
    if cfg.finetune == "lora":
        student = {"base_model": cfg.base_model, "adapter": "adapter", "recipe": cfg.recipe}
    else:
        student = {"base_model": cfg.base_model, "adapter": None, "model": "model", "recipe": cfg.recipe}
    epochs_done = trainer.state.global_step / steps_per_epoch
    train_losses = [r["loss"] for r in log_rows if "loss" in r]
    eval_losses = [r for r in log_rows if "eval_loss" in r]
    tokens_per_s = trainer.tokens_seen / dt if dt > 0 else 0.0
    summary = {
        "base_model": cfg.base_model, "adapter": student["adapter"], "recipe": cfg.recipe, "method": cfg.method,
        "finetune": cfg.finetune, "rows": len(train_feats), "heldout_rows": len(held), "skipped": tally.to_dict(),
        "steps": trainer.state.global_step, "epochs": round(epochs_done, 3), "wall_s": round(dt, 1),
        "resumed_from": last.name if last else None, "device": device, "dtype": dtype, "packing": packing,
        "tokens_per_s": round(tokens_per_s, 1),
        "pad_share": round(1 - trainer.tokens_seen / trainer.positions_seen, 4) if trainer.positions_seen else 0.0,
        "trainable_params": n_trainable, "params": n_params,
        "memory_estimate_gib": round(est["total"] / 2 ** 30, 2),
        "final_loss": train_losses[-1] if train_losses else None,
        "final_heldout_loss": eval_losses[-1]["eval_loss"] if eval_losses else None,
        "config": cfg.model_dump(mode="json"),
    }
    write_json(out / "student.json", student)
    write_json(out / "train_summary.json", summary)
    plot_loss_curve(out)
    info(f"train: {summary['steps']} steps in {dt:.0f}s ({summary['tokens_per_s']} tokens/s, pad share {summary['pad_share']:.0%}), "
         f"final loss {summary['final_loss']}" + (f", held-out {summary['final_heldout_loss']:.4f}" if eval_losses else ""))
    return summary
