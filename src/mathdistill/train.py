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

Presets: ``seed`` reproduces the seed's recipe exactly (lr 8e-5, 3 epochs, r 8, alpha 16, dropout 0.1);
the demo uses ``fast`` (a higher lr so a few hundred rows move the student within minutes).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from .config import StageConfig
from .errors import UserError
from .io import Tally, read_json, write_json
from .models import DEFAULT_STUDENT, load, resolve
from .progress import bar, info
from .prompts import alpaca_rows, messages

CHECKPOINTS = "checkpoints"
RESUME_KEYS = ("base_model", "method", "finetune", "teacher", "learning_rate", "epochs", "max_steps", "lora_r",
               "lora_alpha", "lora_dropout", "target_modules", "batch_size", "grad_accum", "max_length",
               "warmup_ratio", "weight_decay", "lr_scheduler", "group_by_length", "packing", "seed",
               "heldout_fraction", "kd_loss", "kd_beta", "kd_alpha", "kd_temperature", "kd_on_policy")


class TrainConfig(StageConfig):
    """Training settings (defaults: the demo's ``fast`` LoRA recipe; ``--preset seed`` gives the seed's)."""

    # what is trained, and how
    base_model: str = Field(DEFAULT_STUDENT, description="student to fine-tune: alias, local folder, .gguf or hub id")
    recipe: str = Field("fast", description="name of the recipe, recorded in the report")
    method: Literal["sft", "kd"] = Field("sft", description="sft: cross-entropy on the answers; kd: plus logit distillation from `teacher`")
    finetune: Literal["lora", "full"] = Field("lora", description="lora: train LoRA adapters on a frozen base; full: train every weight")
    learning_rate: float = Field(4e-4, gt=0, description="peak learning rate")
    epochs: float = Field(2, gt=0, description="passes over the dataset")
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: use epochs)")
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    target_modules: str | list[str] = Field("all-linear", description="modules that get LoRA adapters (all-linear, or names such as [q_proj, v_proj])")
    batch_size: int = Field(8, ge=1, description="rows per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_length: int = Field(512, ge=16, description="rows longer than this many tokens are dropped (counted); packed sequences hold at most this many")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="share of steps with linear warm-up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name")
    seed: int = Field(42, description="seed of data order, held-out split, dropout and LoRA init")
    # throughput and memory
    packing: bool = Field(False, description="pack each micro-batch's rows into as few max_length sequences as fit (no pad tokens; block-diagonal attention)")
    group_by_length: bool = Field(True, description="batch rows of similar length together (less padding)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass (less memory, one more forward per step)")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="compute precision; auto: bf16 on a GPU that supports it, fp32 on CPU")
    memory_limit_gb: float | None = Field(None, gt=0, description="memory the run may use, for the early fit check (None: what the device has free)")
    threads: int | None = Field(None, description="torch threads (None: all cores)")
    # checkpoints and the held-out loss
    save_steps: int = Field(50, ge=0, description="write a checkpoint every N optimizer steps (0: none); `--resume` continues from the newest")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept on disk (oldest deleted first)")
    heldout_fraction: float = Field(0.05, ge=0, lt=0.5, description="share of rows held out for the loss logged each epoch (0: none; at least 1 row otherwise)")
    # logit distillation (method: kd)
    teacher: str | None = Field(None, description="local teacher for method kd: folder, .gguf, run folder or alias; must share the student's tokenizer")
    kd_loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field("forward_kl", description="divergence between teacher and student next-token distributions")
    kd_beta: float = Field(0.5, ge=0, le=1, description="JSD mixture weight of the teacher (kd_loss jsd only; 0 = forward KL, 1 = reverse KL)")
    kd_alpha: float = Field(0.5, ge=0, le=1, description="loss = (1 - kd_alpha)·CE + kd_alpha·T²·divergence")
    kd_temperature: float = Field(1.0, gt=0, description="softmax temperature T of both distributions in the divergence")
    kd_on_policy: float = Field(0.0, ge=0, le=1, description="share of micro-batches where the student samples the answers and the teacher scores them (GKD's lambda)")
    kd_max_new_tokens: int = Field(128, ge=1, description="length limit of the student's on-policy samples")
    kd_sample_temperature: float = Field(1.0, gt=0, description="sampling temperature of the on-policy samples")
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


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of rows grouped into as few bins of at most ``capacity`` tokens as first-fit-decreasing finds,
    then balanced across those bins (longest row to the emptiest bin), so the bins, padded to the longest one,
    carry almost no pad tokens. Each bin lists its rows in their original order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    room: list[int] = []
    for i in order:  # first-fit-decreasing: how many bins are needed
        for b, r in enumerate(room):
            if lengths[i] <= r:
                room[b] -= lengths[i]
                break
        else:
            room.append(capacity - lengths[i])
    k = len(room)
    bins: list[list[int]] = [[] for _ in range(k)]
    loads = [0] * k
    for i in order:  # balance: longest processing time first
        j = min(range(k), key=loads.__getitem__)
        bins[j].append(i)
        loads[j] += lengths[i]
    if max(loads) > capacity:  # balancing overshot a bin: keep the first-fit bins
        bins, room = [], []
        for i in order:
            for b, r in enumerate(room):
                if lengths[i] <= r:
                    bins[b].append(i)
                    room[b] -= lengths[i]
                    break
            else:
                bins.append([i])
                room.append(capacity - lengths[i])
    return [sorted(b) for b in bins]


class Collator:
    """Right-pads a list of {input_ids, labels} to the longest row; with ``pack_length``, first packs the rows
    into as few sequences of at most that many tokens as fit, with per-row position ids and no attention mask."""

    def __init__(self, pad_id: int, pack_length: int | None = None):
        self.pad_id, self.pack_length = pad_id, pack_length

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if not self.pack_length:
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
        lengths = [len(r["input_ids"]) for r in rows]
        bins = pack_rows(lengths, max(self.pack_length, max(lengths)))
        n = max(sum(lengths[i] for i in b) for b in bins)
        ids = torch.full((len(bins), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(bins), n), -100, dtype=torch.long)
        pos = torch.zeros((len(bins), n), dtype=torch.long)
        for j, b in enumerate(bins):
            at = 0
            for i in b:
                k = lengths[i]
                ids[j, at:at + k] = torch.tensor(rows[i]["input_ids"])
                lab = torch.tensor(rows[i]["labels"])
                lab[0] = -100  # the previous row's last token never predicts this row's first
                labels[j, at:at + k] = lab
                pos[j, at:at + k] = torch.arange(k)
                at += k
            pos[j, at:] = torch.arange(n - at)  # the pad tail is a sequence of its own: nothing attends to it
        return {"input_ids": ids, "labels": labels, "position_ids": pos, "n_real": torch.tensor(sum(lengths))}


def _unwrap(model):
    while hasattr(model, "module"):  # DDP / DeepSpeed wrappers
        model = model.module
    return model


def answer_logits(model, inputs: dict[str, Any]):
    """(logits, targets) at the answer positions only: ``N x V`` and ``N``.

    The LM head gets only the hidden states whose next token is an answer token: a forward pre-hook swaps
    its input inside the model's own forward, so wrappers (PEFT, DDP, ZeRO, FSDP) see an ordinary call."""
    labels = inputs["labels"]
    nxt = labels[:, 1:] != -100
    keep = labels.new_zeros(labels.shape, dtype=bool)
    keep[:, :-1] = nxt
    head = _unwrap(model).get_output_embeddings()

    def only_answers(_module, args):
        return (args[0][keep].unsqueeze(0),) + tuple(args[1:])

    handle = head.register_forward_pre_hook(only_answers)
    try:
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"),
                    position_ids=inputs.get("position_ids"), use_cache=False)
    finally:
        handle.remove()
    return out.logits[0], labels[:, 1:][nxt]


def answer_only_loss(model, inputs: dict[str, Any], num_items_in_batch=None):
    """Cross-entropy on answer tokens (sum / ``num_items_in_batch``, or the mean over this batch)."""
    import torch.nn.functional as F

    logits, target = answer_logits(model, inputs)
    loss = F.cross_entropy(logits.float(), target, reduction="sum")
    denom = num_items_in_batch if num_items_in_batch is not None else target.numel()
    return loss / max(int(denom), 1)


def kd_loss(student_logits, teacher_logits, target, cfg: TrainConfig, vocab: int, denom):
    """``(1 - alpha)·CE + alpha·T²·D`` summed over answer positions and divided by ``denom``."""
    import torch.nn.functional as F

    from .distill import divergence

    ce = F.cross_entropy(student_logits.float(), target, reduction="sum")
    d = divergence(student_logits[:, :vocab], teacher_logits[:, :vocab], cfg.kd_loss, cfg.kd_beta,
                   cfg.kd_temperature, denom=1) * cfg.kd_temperature ** 2
    return ((1 - cfg.kd_alpha) * ce + cfg.kd_alpha * d) / denom


def _trainer_cls():
    from transformers import PrinterCallback, Trainer, TrainerCallback

    class DistillTrainer(Trainer):
        """The transformers Trainer with our answer-only loss (+ KD), token counting and atomic checkpoints."""

        def __init__(self, *a, cfg: TrainConfig, tok, teacher=None, **kw):
            super().__init__(*a, **kw)
            self.remove_callback(PrinterCallback)  # our Rich bar shows the loss
            self.cfg, self.tok, self.teacher = cfg, tok, teacher
            self.loss_is_scaled_for_ga = True  # compute_loss divides by the accumulation step's answer tokens
            self.tokens_seen = 0  # real (non-pad) tokens through forward+backward in this process
            self.positions_seen = 0  # every position computed, pads included
            self._staging: str | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

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

                    gen = sample_on_policy(_unwrap(model), self.tok, inputs, cfg.kd_max_new_tokens,
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
            import torch

            # the eval loader draws from the global RNG; keep the training stream (dropout) as if eval never ran,
            # so a run resumed from a checkpoint taken before an evaluation continues identically
            with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
                return super().evaluate(*a, **kw)

        def _get_train_sampler(self, train_dataset=None):
            if not self.cfg.group_by_length:
                return super()._get_train_sampler(train_dataset)  # accelerate seeds it by seed + epoch
            return _EpochLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                              lengths=(train_dataset or self.train_dataset)["length"], seed=self.cfg.seed)

        # Atomic checkpoints: the Trainer writes checkpoint-N into a staging folder, which is renamed into place.
        def _get_output_dir(self, trial):
            return self._staging or super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial):
            final_root = Path(super()._get_output_dir(trial))
            staging = final_root / f".staging-{self.state.global_step}"  # one name for every rank
            shutil.rmtree(staging, ignore_errors=True)
            self._staging = str(staging)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging = None
            self.accelerator.wait_for_everyone()  # every rank's shards are written before the rename
            if not self.args.should_save:
                return
            name = f"checkpoint-{self.state.global_step}"
            write_json(staging / name / "mathdistill_config.json", self.cfg.model_dump(mode="json"))
            (staging / name / "training_args.bin").unlink(missing_ok=True)  # pickled TrainingArguments; never read back
            dest = final_root / name
            if dest.exists():  # saved again at the same step (after a resume): swap the old one out first
                old = final_root / f".old-{name}"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(dest, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(staging / name, dest)
            shutil.rmtree(staging, ignore_errors=True)
            for stale in _checkpoints(final_root)[: -self.cfg.keep_checkpoints]:
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

    return DistillTrainer, RichProgress


def _length_grouped_sampler_base():
    from transformers.trainer_pt_utils import LengthGroupedSampler

    return LengthGroupedSampler


class _EpochLengthGroupedSampler:
    """transformers' LengthGroupedSampler with its permutation drawn from ``seed + epoch`` instead of the global
    RNG, so a resumed run sees exactly the batches the uninterrupted run would have seen."""

    def __new__(cls, batch_size: int, lengths: list[int], seed: int):
        base = _length_grouped_sampler_base()

        class Sampler(base):
            def __init__(self):
                super().__init__(batch_size, lengths=lengths)
                self.seed, self.epoch = seed, 0

            def set_epoch(self, epoch: int) -> None:
                self.epoch = epoch

            def __iter__(self):
                import torch

                self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
                return super().__iter__()

        return Sampler()


def _read_log(path: Path) -> list[dict[str, Any]]:
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


def _checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (a staging folder is never one)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("checkpoint-") and p.name[11:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[11:]))


def _device_and_dtype(cfg: TrainConfig) -> tuple[str, str]:
    import torch

    cuda = torch.cuda.is_available()
    if cfg.dtype == "auto":
        dt = "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32"
    else:
        dt = cfg.dtype
    if dt == "bfloat16" and not cuda:
        raise UserError("train: dtype bfloat16 needs a GPU here; use dtype auto or float32 on CPU")
    return ("cuda" if cuda else "cpu"), dt


def estimate_memory(model, cfg: TrainConfig, tokens_per_micro: int, seq_len: int, n_trainable: int,
                    answer_tokens_per_micro: int, dtype: str, teacher=None) -> dict[str, float]:
    """Rough bytes needed: weights, gradients + AdamW state of trainable weights, saved activations, answer logits.

    Activations per token and layer (elements): ~20·hidden + 4·intermediate (norm, q/k/v/o, MLP, LoRA inputs)
    + 2·heads·seq (attention scores when the kernel materialises them); only the layer inputs with gradient
    checkpointing."""
    c = model.config
    h = getattr(c, "hidden_size", 0) or 0
    inter = getattr(c, "intermediate_size", 4 * h) or 4 * h
    layers = getattr(c, "num_hidden_layers", 0) or 0
    heads = getattr(c, "num_attention_heads", 1) or 1
    vocab = getattr(c, "vocab_size", 0) or 0
    act_b = 2 if dtype == "bfloat16" else 4
    n_params = sum(p.numel() for p in model.parameters())
    weights = n_params * next(model.parameters()).element_size()
    if teacher is not None:
        weights += sum(p.numel() * p.element_size() for p in teacher.parameters())
    optim = n_trainable * (4 + 8)  # fp32 gradient + AdamW's two moments
    per_tok_layer = 20 * h + 4 * inter + 2 * heads * seq_len
    if cfg.gradient_checkpointing:
        acts = tokens_per_micro * (layers * h + per_tok_layer) * act_b
    else:
        acts = tokens_per_micro * layers * per_tok_layer * act_b
    logits = answer_tokens_per_micro * vocab * 4 * (3 if teacher is None else 6)  # logits, softmax, grad (+teacher)
    return {"weights": weights, "optimizer": optim, "activations": acts, "logits": logits,
            "total": weights + optim + acts + logits}


def _available_bytes(cfg: TrainConfig, device: str) -> float:
    if cfg.memory_limit_gb:
        return cfg.memory_limit_gb * 2 ** 30
    if device == "cuda":
        import torch

        return float(torch.cuda.mem_get_info()[0])
    import psutil

    return float(psutil.virtual_memory().available)


def check_fits(est: dict[str, float], available: float, cfg: TrainConfig, device: str, seq_len: int) -> None:
    """Stop before training when the estimate exceeds the memory at hand, with what to change."""
    if est["total"] <= available:
        return
    g = 2 ** 30
    tips = []
    if cfg.batch_size > 1:
        tips.append(f"batch_size {max(1, cfg.batch_size // 4)} with grad_accum {cfg.grad_accum * min(4, cfg.batch_size)} (same rows per step)")
    if not cfg.gradient_checkpointing:
        tips.append("gradient_checkpointing: true")
    tips.append(f"max_length below {seq_len}")
    if cfg.finetune == "full":
        tips.append("finetune: lora")
    raise UserError(
        f"train: batch_size {cfg.batch_size} x {seq_len} tokens needs about {est['total'] / g:.1f} GiB "
        f"(weights {est['weights'] / g:.1f}, optimizer {est['optimizer'] / g:.1f}, activations {est['activations'] / g:.1f}, "
        f"logits {est['logits'] / g:.1f}) but {available / g:.1f} GiB is free on {device}; try " + ", or ".join(tips))


def plot_loss_curve(train_dir: str | Path, png: str | Path | None = None) -> Path | None:
    """Train and held-out loss against optimizer steps, from ``train_log.jsonl``, as a PNG (default
    ``<train_dir>/loss.png``). Returns the PNG path, or None when there is no log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = Path(train_dir) / "train_log.jsonl"
    if not log.is_file():
        return None
    rows = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines() if x.strip()]
    tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    ev = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not tr and not ev:
        return None
    out = Path(png) if png else Path(train_dir) / "loss.png"
    fig, ax = plt.subplots(figsize=(7, 3.4))
    if tr:
        ax.plot(*zip(*tr), label="train loss", lw=1.2)
    if ev:
        ax.plot(*zip(*ev), "o-", label="held-out loss", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per answer token")
    ax.set_title("Training loss (train and held-out)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _featurize(rows: list[Any], tok, cfg: TrainConfig, dataset_path) -> tuple[list[dict[str, Any]], Tally]:
    tally = Tally()
    feats = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            tally.add("not_an_object", f"{dataset_path}:#{i}: a {type(r).__name__}")
            continue
        missing = [k for k in ("instruction", "input", "output") if not isinstance(r.get(k), str)]
        if missing:
            tally.add("missing_field", f"{dataset_path}:#{i}: {missing}")
            continue
        ids, labels = tokenize_example(tok, r["instruction"], r["input"], r["output"])
        if len(ids) > cfg.max_length:
            tally.add("too_long", f"{dataset_path}:#{i}: {len(ids)} tokens > max_length {cfg.max_length}")
            continue
        feats.append({"input_ids": ids, "labels": labels, "length": len(ids)})
    return feats, tally


def split_heldout(feats: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    """A seeded held-out slice (at least one row when ``fraction`` > 0 and there are 2 rows or more)."""
    if fraction <= 0 or len(feats) < 2:
        return feats, []
    n = min(len(feats) - 1, max(1, round(len(feats) * fraction)))
    idx = list(range(len(feats)))
    random.Random(seed).shuffle(idx)
    held = set(idx[:n])
    return [f for i, f in enumerate(feats) if i not in held], [f for i, f in enumerate(feats) if i in held]


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

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_root = out / CHECKPOINTS
    last = None
    if resume:
        found = _checkpoints(ckpt_root)
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
    device, dtype = _device_and_dtype(cfg)
    rows = alpaca_rows(read_json(dataset_path), dataset_path)  # a LLaMA-Factory-style file: rendered as it renders it
    set_seed(cfg.seed)
    spec = resolve(cfg.base_model)
    # LoRA on a GPU keeps the frozen base in bf16; full fine-tuning keeps fp32 master weights under bf16 autocast
    load_dtype = "bfloat16" if (dtype == "bfloat16" and cfg.finetune == "lora") else "float32"
    model, tok = load(spec, dtype=load_dtype, trust_remote_code=cfg.trust_remote_code)
    model.train()
    teacher = _load_teacher(cfg, tok, load_dtype) if cfg.method == "kd" else None

    feats, tally = _featurize(rows, tok, cfg, dataset_path)
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
    check_fits(est, _available_bytes(cfg, device), cfg, device, seq)
    info(f"train: {len(train_feats)} rows (+{len(held)} held out), {n_tokens} tokens ({n_answer} answer tokens) per epoch; "
         f"{total_steps} steps of {cfg.batch_size}x{cfg.grad_accum} rows; {cfg.method} {cfg.finetune} "
         f"({n_trainable / 1e6:.2f}M of {n_params / 1e6:.1f}M weights trained), {dtype} on {device}"
         f"{', packed' if packing else ''}; recipe {cfg.recipe} (lr {cfg.learning_rate}, epochs {cfg.epochs}"
         + (f", r {cfg.lora_r}, alpha {cfg.lora_alpha}, dropout {cfg.lora_dropout}" if cfg.finetune == "lora" else "") + ")"
         + (f"; skipped {tally.total()} ({', '.join(tally.counts)})" if tally.total() else "")
         + (f"; resuming from {last.name}" if last else ""))

    args = TrainingArguments(
        output_dir=str(ckpt_root), per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
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
    trainer_cls, progress_cb = _trainer_cls()
    log_path = out / "train_log.jsonl"
    kept = [r for r in _read_log(log_path) if last and r.get("step", 0) <= int(last.name[11:])]
    with open(log_path, "w", encoding="utf-8") as fh:  # a resumed run keeps the rows up to its checkpoint
        fh.writelines(json.dumps(r) + "\n" for r in kept)
    collator = Collator(tok.pad_token_id, cfg.max_length if packing else None)
    t0 = time.monotonic()
    with bar("train", total=total_steps, unit="step") as b:
        trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(train_feats),
                              eval_dataset=Dataset.from_list(held) if held else None,
                              data_collator=collator, callbacks=[progress_cb(b, log_path)], cfg=cfg, tok=tok, teacher=teacher)
        if last:
            b.advance(int(last.name[11:]))
        trainer.train(resume_from_checkpoint=str(last) if last else None)
        history = trainer.state.log_history
        if held and not any("eval_loss" in r and r.get("step") == trainer.state.global_step for r in history):
            trainer.evaluate()  # the held-out loss of the final weights, when the last epoch was cut short
    dt = time.monotonic() - t0
    if not trainer.is_world_process_zero():
        return {}
    log_rows = _read_log(log_path)
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
