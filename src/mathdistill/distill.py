"""Logit-level distillation for ``mathdistill train --method kd``: the divergences, the shared-tokenizer check,
and on-policy sampling (GKD).

The divergence is TRL's ``generalized_jsd_loss`` (the GKD paper's Eq. 1), applied to the answer positions only:

    beta = 0  forward KL   KL(p_teacher || p_student)    (mode covering; classic KD)
    beta = 1  reverse KL   KL(p_student || p_teacher)    (mode seeking)
    0<beta<1  JSD(beta)    beta·KL(p_T || m) + (1-beta)·KL(p_S || m),  m = beta·p_T + (1-beta)·p_S

and the training loss is ``(1 - alpha)·CE(labels) + alpha·T²·D(softmax(z_S/T), softmax(z_T/T))``.
With ``kd_on_policy = λ > 0``, a share λ of the micro-batches is replaced by the student's own samples for the
same prompts, scored by the teacher (divergence only: there is no reference for a sampled answer), as in GKD.
"""

from __future__ import annotations

from typing import Any

from .errors import UserError

KD_BETA = {"forward_kl": 0.0, "reverse_kl": 1.0}  # "jsd" takes kd_beta from the config


def divergence(student_logits, teacher_logits, kind: str = "forward_kl", beta: float = 0.5, temperature: float = 1.0,
               denom=None):
    """Sum over positions of the chosen divergence between rows of logits (``N x V``), divided by ``denom``
    (default: N). ``kind``: ``forward_kl``, ``reverse_kl`` or ``jsd`` (mixture weight ``beta``)."""
    import warnings

    with warnings.catch_warnings():  # GKD lives in trl.experimental; the loss we take from it is the paper's Eq. 1
        warnings.simplefilter("ignore")
        from trl.experimental.gkd.gkd_trainer import GKDTrainer

    b = KD_BETA.get(kind, beta)
    if kind not in ("forward_kl", "reverse_kl", "jsd"):
        raise UserError(f"kd_loss {kind!r}: use forward_kl, reverse_kl or jsd")
    n = student_logits.shape[0]
    d = GKDTrainer.generalized_jsd_loss(student_logits.float()[None], teacher_logits.float()[None], labels=None,
                                        beta=b, temperature=temperature, reduction="sum")
    return d / (denom if denom is not None else max(n, 1))


def check_same_vocabulary(student_tok, teacher_tok, student_name: str, teacher_name: str) -> None:
    """Logit distillation compares distributions token by token: both sides must use one vocabulary."""
    sv, tv = student_tok.get_vocab(), teacher_tok.get_vocab()
    if sv == tv:
        return
    diff = sorted(set(sv.items()) ^ set(tv.items()), key=lambda kv: kv[1])[:1]
    where = f"; first difference: {diff[0][0]!r} (id {diff[0][1]})" if diff else ""
    raise UserError(
        f"kd: teacher and student tokenizers differ: teacher {teacher_name!r} vocabulary {type(teacher_tok).__name__} "
        f"of {len(tv)} tokens vs student {student_name!r} vocabulary {type(student_tok).__name__} of {len(sv)} tokens"
        f"{where}; logit distillation needs one shared tokenizer (pick a teacher of the student's family, "
        f"or train with --method sft on the teacher's traces)")


def sample_on_policy(model, tok, inputs: dict[str, Any], max_new_tokens: int, temperature: float,
                     generator_seed: int) -> dict[str, Any]:
    """The student's own answers to the batch's prompts, as a right-padded batch with labels on the answers."""
    import torch

    ids, labels = inputs["input_ids"], inputs["labels"]
    prompts = []
    for i in range(ids.shape[0]):
        ans = (labels[i] != -100).nonzero()
        n = int(ans[0]) if len(ans) else int(inputs["attention_mask"][i].sum())
        prompts.append(ids[i, :n].tolist())
    width = max(len(p) for p in prompts)
    pad = tok.pad_token_id
    left = torch.full((len(prompts), width), pad, dtype=torch.long, device=ids.device)
    mask = torch.zeros_like(left)
    for i, p in enumerate(prompts):
        left[i, width - len(p):] = torch.tensor(p, device=ids.device)
        mask[i, width - len(p):] = 1
    was_training = model.training
    model.eval()
    devices = [ids.device] if ids.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        torch.manual_seed(generator_seed)  # reproducible samples, and the training RNG stream is left untouched
        out = model.generate(input_ids=left, attention_mask=mask, do_sample=True, temperature=temperature, top_k=0,
                             top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=tok.eos_token_id)
    model.train(was_training)
    rows = []
    for i, p in enumerate(prompts):
        gen = out[i, width:].tolist()
        if tok.eos_token_id in gen:
            gen = gen[: gen.index(tok.eos_token_id) + 1]
        rows.append({"input_ids": p + gen, "labels": [-100] * len(p) + gen})
    n = max(len(r["input_ids"]) for r in rows)
    new_ids = torch.full((len(rows), n), pad, dtype=torch.long, device=ids.device)
    new_labels = torch.full((len(rows), n), -100, dtype=torch.long, device=ids.device)
    new_mask = torch.zeros((len(rows), n), dtype=torch.long, device=ids.device)
    for i, r in enumerate(rows):
        k = len(r["input_ids"])
        new_ids[i, :k] = torch.tensor(r["input_ids"], device=ids.device)
        new_labels[i, :k] = torch.tensor(r["labels"], device=ids.device)
        new_mask[i, :k] = 1
    return {"input_ids": new_ids, "labels": new_labels, "attention_mask": new_mask}
