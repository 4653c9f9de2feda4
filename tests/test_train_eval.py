import json

import pytest
import torch

from conftest import write_jsonl
from mathdistill.backends import answer_complete
from mathdistill.evaluate import EvalConfig, evaluate
from mathdistill.models import load, model_bytes, resolve
from mathdistill.prompts import EN_PROMPT
from mathdistill.train import TrainConfig, train
from mathdistill.train_data import Collator, tokenize_example
from mathdistill.train_losses import answer_only_loss

ROWS = [{"instruction": EN_PROMPT, "input": f"State the final answer: {a} + {b} =", "output": f"{a} + {b} = {a + b}\n#### {a + b}",
         "problem_id": f"p{a}{b}", "source": "chain_sum"} for a in range(3, 9) for b in range(2, 5)]


def test_labels_cover_only_the_answer(tiny_model):
    _, tok = load(resolve(str(tiny_model)))
    ids, labels = tokenize_example(tok, EN_PROMPT, "1 + 2 =", "1 + 2 = 3\n#### 3")
    n_prompt = sum(x == -100 for x in labels)
    answer = tok.decode([t for t, lab in zip(ids, labels) if lab != -100])
    assert answer.startswith("1 + 2 = 3\n#### 3") and "<|im_end|>" in answer
    assert "State" not in answer and n_prompt > 10
    assert labels[:n_prompt] == [-100] * n_prompt


def test_answer_only_loss_equals_full_logits_loss(tiny_model):
    """Applying the LM head only where the loss is taken must give the same loss as the usual full pass."""
    model, tok = load(resolve(str(tiny_model)))
    feats = [dict(zip(("input_ids", "labels"), tokenize_example(tok, EN_PROMPT, r["input"], r["output"]))) for r in ROWS[:4]]
    batch = Collator(tok.pad_token_id)(feats)
    with torch.no_grad():
        ours = answer_only_loss(model, batch)
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_train_writes_adapter_and_lowers_loss(tiny_model, tmp_path):
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps(ROWS))
    cfg = TrainConfig(base_model=str(tiny_model), learning_rate=5e-3, epochs=4, batch_size=6, lora_r=4, lora_alpha=8,
                      heldout_fraction=0.0)
    s = train(cfg, ds, tmp_path / "train")
    assert (tmp_path / "train" / "adapter" / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "train" / "adapter").glob("*.bin")), "no pickle beside the adapter"
    meta = json.loads((tmp_path / "train" / "student.json").read_text())
    assert meta == {"base_model": str(tiny_model), "adapter": "adapter", "recipe": "fast"}
    log = [json.loads(x) for x in (tmp_path / "train" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == s["steps"] == 12
    assert log[-1]["loss"] < log[0]["loss"]
    # the run folder resolves to base + adapter, and ships the adapter's bytes too
    spec = resolve(str(tmp_path / "train"))
    assert spec.adapter and model_bytes(spec) > model_bytes(resolve(str(tiny_model)))


def test_train_counts_rows_it_cannot_use(tiny_model, tmp_path):
    rows = ROWS[:6] + [{"instruction": "x", "input": "y"}, {**ROWS[0], "output": "1 + 1 = 2 " * 400}]
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps(rows))
    s = train(TrainConfig(base_model=str(tiny_model), max_steps=1, max_length=128, heldout_fraction=0.0), ds, tmp_path / "t")
    assert s["rows"] == 6 and s["skipped"]["counts"] == {"missing_field": 1, "too_long": 1}


@pytest.mark.parametrize("text,done", [
    ("3 + 5 = 8\n#### 8\n", True),
    ("3 + 5 = 8\n#### 8<", True),
    ("3 + 5 = 8\n#### 8", False),        # more digits may follow
    ("So the answer is 42. ", True),
    ("So the answer is 4", False),
    ("The answer is 3.5", False),
    ("thus \\boxed{12}", True),
    ("we add 3 and 5", False),
])
def test_answer_complete(text, done):
    assert answer_complete(text) is done


def test_eval_writes_scores_with_every_field(tiny_model, tmp_path):
    probs = [{"id": f"q{i}", "question": f"State the final answer: {i} + 1 =", "answer": str(i + 1),
              "source": "chain_sum" if i % 2 else "basic_arithmetic"} for i in range(5)]
    pf = write_jsonl(tmp_path / "eval.jsonl", probs)
    s = evaluate(EvalConfig(max_new_tokens=6, batch_size=2), pf, tmp_path / "ev", model=str(tiny_model))
    for k in ("AS", "CQS", "ES", "MLS", "overall", "mean_tokens", "model_bytes", "n", "cqs_kind", "by_family"):
        assert k in s
    assert s["n"] == 5 and s["cqs_kind"] == "proxy" and set(s["by_family"]) == {"chain_sum", "basic_arithmetic"}
    assert 1 <= s["mean_tokens"] <= 6
    assert s["meta"]["problem_ids"] == [p["id"] for p in probs]
    assert s["meta"]["sampling"]["max_new_tokens"] == 6 and "math-verify" in s["meta"]["versions"]
    preds = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert [p["problem_id"] for p in preds] == [p["id"] for p in probs]
    assert all(p["finish_reason"] in ("stop", "length") and 1 <= p["tokens"] <= 6 for p in preds)


def test_batched_generation_matches_one_at_a_time(tiny_model, tmp_path):
    probs = [{"id": f"q{i}", "question": "State the final answer: " + "1 + " * i + "1 =", "answer": "1"} for i in range(4)]
    pf = write_jsonl(tmp_path / "eval.jsonl", probs)
    evaluate(EvalConfig(max_new_tokens=8, batch_size=4, stop_at_answer=False), pf, tmp_path / "b", model=str(tiny_model))
    evaluate(EvalConfig(max_new_tokens=8, batch_size=1, stop_at_answer=False), pf, tmp_path / "s", model=str(tiny_model))
    read = lambda d: [json.loads(x)["output"] for x in (tmp_path / d / "predictions.jsonl").read_text().splitlines()]  # noqa: E731
    assert read("b") == read("s")
