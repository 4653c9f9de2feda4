"""The transformers ``Trainer`` of ``mathdistill train``, on public hooks only: the loss (``compute_loss``), the
length-grouped order seeded per epoch (``get_train_dataloader``), the held-out loss without touching the
training RNG (``evaluate``), atomic checkpoints and the live log (``TrainerCallback``s).

Importing this module imports transformers; :func:`mathdistill.train.train` imports it when it runs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from torch.utils.data import DataLoader
from transformers import PrinterCallback, Trainer, TrainerCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from .io import write_json
from .progress import info
from .train_config import TrainConfig
from .train_losses import answer_logits, answer_only_loss, kd_loss, unwrap

STAGING = ".staging"  # the Trainer writes each checkpoint here; AtomicCheckpoints renames it into place


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (a staging folder is never one)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("checkpoint-") and p.name[11:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[11:]))


def read_log(path: Path) -> list[dict[str, Any]]:
    """Rows of ``train_log.jsonl``; a line cut short by a crash is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class EpochLengthGroupedSampler(LengthGroupedSampler):
    """transformers' LengthGroupedSampler with its permutation drawn from ``seed + epoch`` instead of the global
    RNG, so a resumed run sees exactly the batches the uninterrupted run would have seen."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:  # called by accelerate's prepared loader at each epoch
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return super().__iter__()


class DistillTrainer(Trainer):
    """The transformers Trainer with our answer-only loss (+ KD), token counting and a seeded length-grouped order."""

    def __init__(self, *a, cfg: TrainConfig, tok, teacher=None, **kw):
        super().__init__(*a, **kw)
        self.remove_callback(PrinterCallback)  # our Rich bar shows the loss
        self.cfg, self.tok, self.teacher = cfg, tok, teacher
        self.loss_is_scaled_for_ga = True  # compute_loss divides by the accumulation step's answer tokens
        self.tokens_seen = 0  # real (non-pad) tokens through forward+backward in this process
        self.positions_seen = 0  # every position computed, pads included

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        training = model.training
        if training:
            real = inputs["n_real"] if "n_real" in inputs else inputs["attention_mask"].sum()
            self.tokens_seen += int(real)
            self.positions_seen += inputs["input_ids"].numel()
        ga = self.current_gradient_accumulation_steps if training else 1
        if self.teacher is None:
            loss = answer_only_loss(model, inputs, num_items_in_batch)
            if num_items_in_batch is None:
                loss = loss / ga
            return (loss, {"loss": loss}) if return_outputs else loss
        self.teacher.to(inputs["input_ids"].device)
        vocab = len(self.tok)
        cfg = self.cfg
        if training and cfg.kd_on_policy > 0:
            salt = f"{cfg.seed}-{self.state.global_step}-{int(inputs['input_ids'].sum())}"
            if random.Random(salt).random() < cfg.kd_on_policy:
                from .distill import divergence, sample_on_policy

                gen = sample_on_policy(unwrap(model), self.tok, inputs, cfg.kd_max_new_tokens,
                                       cfg.kd_sample_temperature, random.Random(salt).randrange(2 ** 31))
                s_logits, target = answer_logits(model, gen)
                with torch.no_grad():
                    t_logits, _ = answer_logits(self.teacher, gen)
                d = divergence(s_logits[:, :vocab], t_logits[:, :vocab], cfg.kd_loss, cfg.kd_beta,
                               cfg.kd_temperature, denom=max(target.numel(), 1)) * cfg.kd_temperature ** 2
                loss = d / ga  # the student's own answers have no reference: divergence only
                return (loss, {"loss": loss}) if return_outputs else loss
        s_logits, target = answer_logits(model, inputs)
        with torch.no_grad():
            t_logits, _ = answer_logits(self.teacher, inputs)
        denom = num_items_in_batch if num_items_in_batch is not None else max(target.numel(), 1) * ga
        loss = kd_loss(s_logits, t_logits, target, cfg, vocab, denom)
        return (loss, {"loss": loss}) if return_outputs else loss

    def evaluate(self, *a, **kw):
        # the eval loader draws from the global RNG; keep the training stream (dropout) as if eval never ran,
        # so a run resumed from a checkpoint taken before an evaluation continues identically
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            return super().evaluate(*a, **kw)

    def get_train_dataloader(self) -> DataLoader:
        """With ``group_by_length``: batches of similar lengths in an order drawn from ``seed + epoch``."""
        if not self.cfg.group_by_length:
            return super().get_train_dataloader()  # accelerate seeds its random sampler by seed + epoch
        args = self.args
        sampler = EpochLengthGroupedSampler(args.train_batch_size * args.gradient_accumulation_steps,
                                            lengths=self.train_dataset["length"], seed=self.cfg.seed)
        loader = DataLoader(self.train_dataset, batch_size=args.train_batch_size, sampler=sampler,
                            collate_fn=self.data_collator, num_workers=args.dataloader_num_workers,
                            pin_memory=args.dataloader_pin_memory, drop_last=args.dataloader_drop_last)
        return self.accelerator.prepare(loader)


class AtomicCheckpoints(TrainerCallback):
    """The Trainer writes ``checkpoint-N`` under ``<root>/.staging`` (its ``output_dir``); once it is complete on
    every rank, it is renamed into ``<root>`` with the resolved config beside it, and the oldest beyond ``keep``
    are deleted. A crash mid-write leaves only the staging folder, which is never resumed from."""

    def __init__(self, root: Path, cfg: TrainConfig):
        self.root, self.cfg = root, cfg

    def on_save(self, args, state, control, **kw):
        PartialState().wait_for_everyone()  # every rank's shards are written before the rename
        if not state.is_world_process_zero:
            return
        name = f"checkpoint-{state.global_step}"
        staging = self.root / STAGING
        write_json(staging / name / "mathdistill_config.json", self.cfg.model_dump(mode="json"))
        (staging / name / "training_args.bin").unlink(missing_ok=True)  # pickled TrainingArguments; never read back
        dest = self.root / name
        if dest.exists():  # saved again at the same step (after a resume): swap the old one out first
            old = self.root / f".old-{name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(staging / name, dest)
        shutil.rmtree(staging, ignore_errors=True)
        for stale in checkpoints(self.root)[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(stale, ignore_errors=True)


class RichProgress(TrainerCallback):
    """Advances the bar and appends every loss row to ``train_log.jsonl`` as it comes (a crash keeps the log)."""

    def __init__(self, b, log_path: Path | None):
        self.b, self.log_path = b, log_path

    def on_step_end(self, args, state, control, **kw):
        self.b.advance()

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and self.log_path and state.is_world_process_zero and ("loss" in logs or "eval_loss" in logs):
            row = {"step": state.global_step, "epoch": round(state.epoch or 0, 3), **logs}
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        if logs and "loss" in logs:
            self.b.set_postfix(f"loss {logs['loss']:.3f}")
        if logs and "eval_loss" in logs:
            info(f"train: epoch {state.epoch or 0:.2f} held-out loss {logs['eval_loss']:.4f}")
