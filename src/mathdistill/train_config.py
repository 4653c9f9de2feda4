"""``TrainConfig``: the settings of ``mathdistill train`` (TRL-style, beside the trainer in ``train_trainer.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .config import StageConfig
from .models import DEFAULT_STUDENT

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
