"""Stage ``train``: LoRA SFT of the student on curated rows (PEFT on the transformers Trainer).

Each row is rendered with the student's own chat template (``system`` = instruction, ``user`` = input,
``assistant`` = output) and the loss is taken on the answer tokens only. The LM head is applied only at
those positions: on a 49k vocabulary that is the difference between ~18 and ~90 tokens/s on 2 CPU cores,
for the same loss.

Presets: ``seed`` reproduces the seed's recipe exactly (lr 8e-5, 3 epochs, r 8, alpha 16, dropout 0.1);
the demo uses ``fast`` (a higher lr so a few hundred rows move the student within minutes).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from .config import StageConfig
from .errors import UserError
from .io import Tally, read_json, write_json
from .models import DEFAULT_STUDENT, load, resolve
from .progress import bar, info
from .prompts import messages


class TrainConfig(StageConfig):
    """LoRA SFT settings (defaults: the demo's ``fast`` recipe; ``--preset seed`` gives the seed's)."""

    base_model: str = Field(DEFAULT_STUDENT, description="student to fine-tune: alias, local folder, .gguf or hub id")
    recipe: str = Field("fast", description="name of the recipe, recorded in the report")
    learning_rate: float = Field(4e-4, gt=0, description="peak learning rate")
    epochs: float = Field(2, gt=0, description="passes over the dataset")
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: use epochs)")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: str | list[str] = Field("all-linear", description="modules that get LoRA adapters")
    batch_size: int = Field(8, ge=1, description="rows per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_length: int = Field(512, ge=16, description="rows longer than this many tokens are dropped (counted)")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of steps with linear warm-up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name")
    group_by_length: bool = Field(True, description="batch rows of similar length together (less padding)")
    seed: int = Field(42, description="seed of data order, dropout and LoRA init")
    threads: int | None = Field(None, description="torch threads (None: all cores)")
    trust_remote_code: bool = Field(False, description="allow model code from the model folder")


def tokenize_example(tok, instruction: str, question: str, answer: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels -100 on the prompt; the answer ends with the template's end-of-turn."""
    prompt = tok.apply_chat_template(messages(instruction, question), add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(messages(instruction, question, answer), tokenize=False)
    if not full.startswith(prompt):  # template renders the assistant turn differently: append by hand
        full = prompt + answer + (tok.eos_token or "")
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tok(full, add_special_tokens=False)["input_ids"]
    if f_ids[: len(p_ids)] != p_ids:  # tokenization merged across the boundary: tokenize the parts
        f_ids = p_ids + tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
    labels = [-100] * len(p_ids) + f_ids[len(p_ids):]
    return f_ids, labels


class Collator:
    """Right-pads a list of {input_ids, labels} to the longest row."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), n), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k] = torch.tensor(r["input_ids"])
            labels[i, :k] = torch.tensor(r["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def answer_only_loss(model, inputs: dict[str, Any], num_items_in_batch=None):
    """Cross-entropy on answer tokens, with the LM head applied only where the loss is taken."""
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = inputs["labels"]
    hidden = base.get_decoder()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    loss = F.cross_entropy(logits.float(), target[keep], reduction="sum")
    denom = num_items_in_batch if num_items_in_batch is not None else keep.sum()
    return loss / max(int(denom), 1)


def _trainer_cls():
    from transformers import PrinterCallback, Trainer, TrainerCallback

    class AnswerOnlyTrainer(Trainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.remove_callback(PrinterCallback)  # our Rich bar shows the loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = answer_only_loss(model, inputs, num_items_in_batch)
            return (loss, None) if return_outputs else loss

    class RichProgress(TrainerCallback):
        def __init__(self, b, log_rows: list[dict[str, Any]]):
            self.b, self.log_rows = b, log_rows

        def on_step_end(self, args, state, control, **kw):
            self.b.advance()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.log_rows.append({"step": state.global_step, "epoch": round(state.epoch or 0, 3), **logs})
                self.b.set_postfix(f"loss {logs['loss']:.3f}")

    return AnswerOnlyTrainer, RichProgress


def train(cfg: TrainConfig, dataset_path: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Fine-tune ``cfg.base_model`` on an Alpaca dataset; write the adapter and ``student.json`` to ``out_dir``."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments, set_seed

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rows = read_json(dataset_path)
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{dataset_path}: expected a non-empty JSON list of Alpaca rows (instruction, input, output)")
    set_seed(cfg.seed)
    spec = resolve(cfg.base_model)
    model, tok = load(spec, trust_remote_code=cfg.trust_remote_code)
    model.train()

    tally = Tally()
    feats = []
    for i, r in enumerate(rows):
        missing = [k for k in ("instruction", "input", "output") if not isinstance(r.get(k), str)]
        if missing:
            tally.add("missing_field", f"{dataset_path}:#{i}: {missing}")
            continue
        ids, labels = tokenize_example(tok, r["instruction"], r["input"], r["output"])
        if len(ids) > cfg.max_length:
            tally.add("too_long", f"{dataset_path}:#{i}: {len(ids)} tokens > max_length {cfg.max_length}")
            continue
        feats.append({"input_ids": ids, "labels": labels, "length": len(ids)})
    if not feats:
        raise UserError(f"train: no usable rows in {dataset_path} ({'; '.join(tally.lines()[:2])})")
    n_tokens = sum(len(f["input_ids"]) for f in feats)
    n_answer = sum(sum(x != -100 for x in f["labels"]) for f in feats)
    steps_per_epoch = math.ceil(len(feats) / (cfg.batch_size * cfg.grad_accum))
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    info(f"train: {len(feats)} rows, {n_tokens} tokens ({n_answer} answer tokens) per epoch; "
         f"{total_steps} steps of {cfg.batch_size}x{cfg.grad_accum} rows; recipe {cfg.recipe} "
         f"(lr {cfg.learning_rate}, epochs {cfg.epochs}, r {cfg.lora_r}, alpha {cfg.lora_alpha}, dropout {cfg.lora_dropout})"
         + (f"; skipped {tally.total()} ({', '.join(tally.counts)})" if tally.total() else ""))

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    args = TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, warmup_steps=math.ceil(cfg.warmup_ratio * total_steps), weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler, logging_steps=1, save_strategy="no", report_to=[], seed=cfg.seed,
        data_seed=cfg.seed, use_cpu=not torch.cuda.is_available(), disable_tqdm=True, remove_unused_columns=False,
        dataloader_num_workers=0, log_level="warning",
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random", length_column_name="length")
    trainer_cls, progress_cb = _trainer_cls()
    log_rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    with bar("train", total=total_steps, unit="step") as b:
        trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(feats),
                              data_collator=Collator(tok.pad_token_id), callbacks=[progress_cb(b, log_rows)])
        trainer.train()
    dt = time.monotonic() - t0
    adapter_dir = out / "adapter"
    model.save_pretrained(str(adapter_dir))
    tok.save_pretrained(str(adapter_dir))
    epochs_done = total_steps / steps_per_epoch
    summary = {
        "base_model": cfg.base_model, "adapter": "adapter", "recipe": cfg.recipe, "rows": len(feats),
        "skipped": tally.to_dict(), "steps": total_steps, "epochs": round(epochs_done, 3), "wall_s": round(dt, 1),
        "tokens_per_s": round(n_tokens * epochs_done / dt, 1), "final_loss": log_rows[-1]["loss"] if log_rows else None,
        "config": cfg.model_dump(mode="json"),
    }
    write_json(out / "student.json", {"base_model": cfg.base_model, "adapter": "adapter", "recipe": cfg.recipe})
    write_json(out / "train_summary.json", summary)
    with open(out / "train_log.jsonl", "w", encoding="utf-8") as fh:
        for r in log_rows:
            fh.write(json.dumps(r) + "\n")
    info(f"train: {total_steps} steps in {dt:.0f}s ({summary['tokens_per_s']} tokens/s), final loss {summary['final_loss']}")
    return summary


