"""The fit check before training: device and dtype, a rough memory estimate, and one clear line (with what to
change) when it exceeds the memory at hand."""

from __future__ import annotations

from .errors import UserError
from .train_config import TrainConfig


def device_and_dtype(cfg: TrainConfig) -> tuple[str, str]:
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


def available_bytes(cfg: TrainConfig, device: str) -> float:
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
