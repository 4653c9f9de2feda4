"""Training losses on the answer positions only: cross-entropy (SFT) and the KD mix (``distill.divergence``)."""

from __future__ import annotations

from typing import Any

from .train_config import TrainConfig


def unwrap(model):
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
    head = unwrap(model).get_output_embeddings()

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
