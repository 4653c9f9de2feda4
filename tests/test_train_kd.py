"""Logit distillation: the divergences against hand-computed values, KD training (off- and on-policy) on the
tiny model, and the one-line error when teacher and student vocabularies differ."""

import json
import math

import pytest
import torch

from conftest import build_tiny_model
from mathdistill.distill import divergence
from mathdistill.errors import UserError
from mathdistill.prompts import EN_PROMPT
from mathdistill.train import TrainConfig, train
from mathdistill.train_losses import kd_loss

S = [[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]]  # student logits, 2 positions x 3 tokens
T = [[2.0, 0.5, 0.0], [1.0, 1.0, -1.0]]  # teacher logits


def softmax(row, temp):
    e = [math.exp(x / temp) for x in row]
    return [x / sum(e) for x in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def by_hand(kind, beta, temp):
    total = 0.0
    for s, t in zip(S, T):
        p, q = softmax(t, temp), softmax(s, temp)  # p teacher, q student
        if kind == "forward_kl":
            total += kl(p, q)
        elif kind == "reverse_kl":
            total += kl(q, p)
        else:
            m = [beta * a + (1 - beta) * b for a, b in zip(p, q)]
            total += beta * kl(p, m) + (1 - beta) * kl(q, m)
    return total / len(S)


@pytest.mark.parametrize("kind,beta,temp", [
    ("forward_kl", 0.5, 1.0),   # KL(teacher || student): beta is ignored
    ("reverse_kl", 0.5, 1.0),   # KL(student || teacher)
    ("jsd", 0.5, 1.0),          # symmetric Jensen-Shannon
    ("jsd", 0.2, 1.0),          # skewed towards the student
    ("forward_kl", 0.5, 2.0),   # softened distributions
    ("jsd", 0.9, 2.0),
])
def test_divergences_match_hand_computed_values(kind, beta, temp):
    got = divergence(torch.tensor(S), torch.tensor(T), kind, beta, temp).item()
    assert got == pytest.approx(by_hand(kind, beta, temp), rel=1e-5)


def test_jsd_limits_are_the_two_kls():
    s, t = torch.tensor(S), torch.tensor(T)
    assert divergence(s, t, "jsd", 0.0).item() == pytest.approx(divergence(s, t, "forward_kl").item(), rel=1e-6)
    assert divergence(s, t, "jsd", 1.0).item() == pytest.approx(divergence(s, t, "reverse_kl").item(), rel=1e-6)
    assert divergence(t, t, "jsd", 0.5).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_loss_mixes_ce_and_divergence():
    s, t, y = torch.tensor(S), torch.tensor(T), torch.tensor([1, 2])
    ce = -(math.log(softmax(S[0], 1)[1]) + math.log(softmax(S[1], 1)[2]))  # summed over the 2 positions
    cfg = TrainConfig(kd_loss="forward_kl", kd_alpha=0.3, kd_temperature=2.0)
    want = (0.7 * ce + 0.3 * 4.0 * by_hand("forward_kl", 0, 2.0) * 2) / 2
    assert kd_loss(s, t, y, cfg, vocab=3, denom=2).item() == pytest.approx(want, rel=1e-5)


ROWS = [{"instruction": EN_PROMPT, "input": f"State the final answer: {a} + {b} =", "output": f"{a} + {b} = {a + b}\n#### {a + b}"}
        for a in range(3, 7) for b in range(2, 4)]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """Same tokenizer as the student (trained on the same text), other random weights."""
    return build_tiny_model(tmp_path_factory.mktemp("teacher") / "model", seed=1)


def test_kd_training_runs_and_alpha_zero_is_sft(tiny_model, teacher, tmp_path):
    ds = tmp_path / "d.json"
    ds.write_text(json.dumps(ROWS))
    base = dict(base_model=str(tiny_model), learning_rate=5e-3, batch_size=4, max_steps=2, save_steps=0,
                heldout_fraction=0.0, lora_dropout=0.0, lora_r=4, lora_alpha=8)
    train(TrainConfig(**base), ds, tmp_path / "sft")
    train(TrainConfig(**base, method="kd", teacher=str(teacher), kd_alpha=0.0), ds, tmp_path / "kd0")
    kd = train(TrainConfig(**base, method="kd", teacher=str(teacher), kd_loss="jsd", kd_alpha=0.5), ds, tmp_path / "kd")
    first = lambda d: json.loads((tmp_path / d / "train_log.jsonl").read_text().splitlines()[0])["loss"]  # noqa: E731
    assert first("kd0") == pytest.approx(first("sft"), rel=1e-5)
    assert first("kd") != pytest.approx(first("sft"), rel=1e-3)  # the teacher's term is in the loss
    assert kd["method"] == "kd" and (tmp_path / "kd" / "adapter" / "adapter_model.safetensors").is_file()


def test_on_policy_kd_samples_from_the_student(tiny_model, teacher, tmp_path):
    ds = tmp_path / "d.json"
    ds.write_text(json.dumps(ROWS))
    s = train(TrainConfig(base_model=str(tiny_model), method="kd", teacher=str(teacher), kd_on_policy=1.0,
                          kd_max_new_tokens=6, kd_loss="reverse_kl", batch_size=4, max_steps=2, save_steps=0,
                          heldout_fraction=0.0, lora_r=4, lora_alpha=8), ds, tmp_path / "op")
    log = [json.loads(x) for x in (tmp_path / "op" / "train_log.jsonl").read_text().splitlines()]
    assert s["steps"] == 2 and s["packing"] is False
    assert all(math.isfinite(r["loss"]) and r["loss"] >= 0 for r in log if "loss" in r)


def test_vocabulary_mismatch_is_one_clear_line(tiny_model, tmp_path):
    other = build_tiny_model(tmp_path / "other", vocab_size=300)
    ds = tmp_path / "d.json"
    ds.write_text(json.dumps(ROWS))
    with pytest.raises(UserError) as e:
        train(TrainConfig(base_model=str(tiny_model), method="kd", teacher=str(other)), ds, tmp_path / "t")
    msg = str(e.value)
    assert "\n" not in msg and "tokenizers differ" in msg
    assert str(other) in msg and str(tiny_model) in msg
    from transformers import AutoTokenizer

    n_s, n_t = len(AutoTokenizer.from_pretrained(tiny_model)), len(AutoTokenizer.from_pretrained(other))
    assert n_s != n_t and f"of {n_t} tokens" in msg and f"of {n_s} tokens" in msg


def test_kd_without_teacher_is_a_user_error(tiny_model, tmp_path):
    ds = tmp_path / "d.json"
    ds.write_text(json.dumps(ROWS))
    with pytest.raises(UserError, match="--teacher"):
        train(TrainConfig(base_model=str(tiny_model), method="kd"), ds, tmp_path / "t")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_kd_on_gpu(tiny_model, teacher, tmp_path):
    """On a GPU, dtype auto trains in bf16; one KD run (off- and on-policy) goes through."""
    ds = tmp_path / "d.json"
    ds.write_text(json.dumps(ROWS))
    s = train(TrainConfig(base_model=str(tiny_model), method="kd", teacher=str(teacher), kd_loss="jsd", kd_on_policy=0.5,
                          batch_size=4, max_steps=4, save_steps=2, lora_r=4, lora_alpha=8), ds, tmp_path / "g")
    assert s["device"] == "cuda" and s["dtype"] == "bfloat16" and s["steps"] == 4
    assert math.isfinite(s["final_loss"])
