"""Training data: rows tokenized with the student's chat template (labels only on the answer), packed and
collated into micro-batches, and the seeded held-out split."""

from __future__ import annotations

import random
from typing import Any

from .io import Tally
from .prompts import messages
from .train_config import TrainConfig


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




def featurize(rows: list[Any], tok, cfg: TrainConfig, dataset_path) -> tuple[list[dict[str, Any]], Tally]:
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
