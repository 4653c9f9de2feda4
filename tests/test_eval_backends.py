"""The transformers backend: batching never changes an answer or a token count; bad cases are misses, not crashes."""

import json
import typing

import pytest
import torch

from conftest import scripted_model, write_jsonl
from mathdistill.backends import (BACKENDS, AnswerStop, GenerationConfig, finish_row, generate_batched, make_backend,
                                  truncate_at_answer)
from mathdistill.errors import UserError
from mathdistill.evaluate import EvalConfig, count_misses, evaluate, score_outputs
from mathdistill.models import load, resolve
from mathdistill.records import Problem


@pytest.fixture(scope="module")
def scripted(tiny_model):
    _, tok = load(resolve(str(tiny_model)))
    m = scripted_model(tiny_model)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = tok.eos_token_id
    answer = enc("3 + 5 = 8\n#### 8\n")
    m.scripts = {
        enc(" 1")[-1]: answer + enc("7 + 7 = 14") * 50,      # completes its answer, then would ramble on
        enc(" 2")[-1]: enc("1 + 1 = 2") + [eos],             # stops at EOS, no "####" needed
        enc(" 3")[-1]: enc("1 + 2 + 3") * 60,                # never stops, never answers
        enc(" 4")[-1]: [eos],                                # empty output
    }
    m.default = [eos]
    return m, tok, {"answer": answer, "eos_line": enc("1 + 1 = 2")}


# prompts of different lengths, each ending in the token that picks its script
PROMPTS = ["Calculate ( 56 + -33 ) 1", "2", "John has 35 apples. He buys 93 more. 3", "12 + 35 = 4", "98 + 93 = 1", "= 2"]


@pytest.mark.parametrize("batch_size", [1, 3, 6])
def test_stop_rules_and_token_counts(scripted, batch_size):
    m, tok, parts = scripted
    gens = generate_batched(m, tok, PROMPTS, max_new_tokens=20, batch_size=batch_size, stop_at_answer=True)
    by = {p: g for p, g in zip(PROMPTS, gens)}
    a = by["Calculate ( 56 + -33 ) 1"]
    assert (a.output, a.tokens, a.finish_reason) == ("3 + 5 = 8\n#### 8\n", len(parts["answer"]), "stop")
    b = by["2"]  # EOS counts as a token
    assert (b.output, b.tokens, b.finish_reason) == ("1 + 1 = 2", len(parts["eos_line"]) + 1, "stop")
    c = by["John has 35 apples. He buys 93 more. 3"]
    assert c.finish_reason == "length" and c.tokens == 20
    d = by["12 + 35 = 4"]
    assert (d.output, d.tokens, d.finish_reason) == ("", 1, "stop")


@pytest.mark.parametrize("prune_every", [None, 1, 3])
def test_batched_equals_one_at_a_time_with_stops(scripted, prune_every):
    """Finished rows leave the batch every `prune_every` tokens (None: never); nothing else changes."""
    m, tok, _ = scripted
    one = generate_batched(m, tok, PROMPTS, max_new_tokens=20, batch_size=1, prune_every=None)
    many = generate_batched(m, tok, PROMPTS, max_new_tokens=20, batch_size=6, prune_every=prune_every)
    assert [(g.output, g.tokens, g.finish_reason) for g in one] == [(g.output, g.tokens, g.finish_reason) for g in many]


def test_without_stop_at_answer_the_answer_runs_on(scripted):
    m, tok, parts = scripted
    g = generate_batched(m, tok, PROMPTS[:1], max_new_tokens=20, batch_size=1, stop_at_answer=False)[0]
    assert g.finish_reason == "length" and g.tokens == 20 and g.output.startswith("3 + 5 = 8\n#### 8\n7")


def test_random_model_batched_equals_unbatched(tiny_model):
    """Real numerics (no script): left padding and batching do not change greedy outputs."""
    model, tok = load(resolve(str(tiny_model)))
    with torch.no_grad():  # sharper random weights: outputs that depend on the prompt
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    prompts = ["State the final answer: " + "1 + " * i + "1 =" for i in range(7)] + ["John has 35 apples.", "小明有 3 个苹果"]
    one = generate_batched(model, tok, prompts, max_new_tokens=12, batch_size=1, prune_every=None)
    many = generate_batched(model, tok, prompts, max_new_tokens=12, batch_size=9)
    assert [(g.output, g.tokens) for g in one] == [(g.output, g.tokens) for g in many]
    pruned = generate_batched(model, tok, prompts, max_new_tokens=12, batch_size=9, stop_at_answer=False, prune_every=2)
    whole = generate_batched(model, tok, prompts, max_new_tokens=12, batch_size=9, stop_at_answer=False, prune_every=None)
    assert [(g.output, g.tokens) for g in pruned] == [(g.output, g.tokens) for g in whole]
    assert len({g.output for g in one}) > 1, "prompts should give different outputs, or the test proves little"


def test_misses_are_counted_by_reason(scripted):
    m, tok, _ = scripted
    probs = [Problem(id=f"p{i}", question=q, answer="8") for i, q in enumerate(PROMPTS[:4])]
    gens = generate_batched(m, tok, PROMPTS[:4], max_new_tokens=20, batch_size=4)
    preds = score_outputs(probs, gens)
    assert [p.correct for p in preds] == [True, False, False, False]
    t = count_misses(preds, gens)
    assert dict(t.counts) == {"no_stop": 1, "empty_output": 1}  # p1 answered 2: a wrong number, not a miss


def test_prompt_longer_than_context_is_a_miss_not_a_crash(tiny_model, tmp_path):
    long_q = "John has 35 apples. He buys 93 more. " * 200  # far past the tiny model's 1024 positions
    probs = [{"id": "ok", "question": "State the final answer: 1 + 1 =", "answer": "2"},
             {"id": "long", "question": long_q, "answer": "128"}]
    pf = write_jsonl(tmp_path / "eval.jsonl", probs)
    s = evaluate(EvalConfig(max_new_tokens=4, report=False), pf, tmp_path / "ev", model=str(tiny_model))
    preds = {json.loads(x)["problem_id"]: json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()}
    assert preds["long"]["finish_reason"] == "prompt_too_long" and preds["long"]["correct"] is False
    assert preds["long"]["tokens"] == 0 and preds["ok"]["finish_reason"] in ("stop", "length")
    assert s["n"] == 2 and s["misses"]["prompt_too_long"] == 1


def test_budget_is_capped_by_the_context(scripted):
    """A prompt near the context end gets only the room left, and says so as 'length'."""
    m, tok, _ = scripted
    limit = m.config.max_position_embeddings
    prompt = "1 + " * 2000
    ids = tok(prompt, add_special_tokens=False)["input_ids"][: limit - 8]
    g = generate_batched(m, tok, [tok.decode(ids) + " 3"], max_new_tokens=50, batch_size=1)[0]
    assert g.finish_reason == "length" and g.tokens == limit - g.prompt_tokens < 50


def test_finish_row_and_truncate_agree(scripted):
    m, tok, parts = scripted
    eos = {tok.eos_token_id}
    row = parts["answer"] + tok("7 + 7 = 14", add_special_tokens=False)["input_ids"]
    assert truncate_at_answer(tok, row, eos, 50, True) == (len(parts["answer"]), "stop")
    assert truncate_at_answer(tok, row, eos, 50, False) == (len(row), "length")
    assert truncate_at_answer(tok, row, eos, 3, True) == (3, "length")
    assert finish_row(parts["eos_line"] + [tok.eos_token_id, 0, 0], eos, None, None, 50) == (len(parts["eos_line"]) + 1, "stop")
    # a row stopped by the criterion is padded afterwards: the pad is not counted
    assert finish_row(parts["answer"] + [tok.pad_token_id] * 3, eos - {tok.pad_token_id}, len(parts["answer"]), "stop", 50) == (len(parts["answer"]), "stop")


def test_answer_stop_marks_rows_once(scripted):
    _, tok, parts = scripted
    stop = AnswerStop(tok, prompt_len=1, budgets=[100, 2])
    ids = torch.tensor([[0] + parts["answer"][:2], [0] + parts["answer"][:2]])
    assert stop(ids, None).tolist() == [False, True] and stop.why == [None, "length"]
    ids = torch.tensor([[0] + parts["answer"], [0] + parts["answer"]])
    assert stop(ids, None).tolist() == [True, True] and stop.why == ["stop", "length"]
    assert stop.done_at == [len(parts["answer"]), 2]


def test_vllm_backend_absent_is_one_clear_line(tiny_model, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, even where it is installed
    pf = write_jsonl(tmp_path / "eval.jsonl", [{"id": "a", "question": "1 + 1 =", "answer": "2"}])
    with pytest.raises(UserError, match="needs the vllm package") as e:
        evaluate(EvalConfig(backend="vllm"), pf, tmp_path / "ev", model=str(tiny_model))
    assert "\n" not in str(e.value)


def test_vllm_backend_truncates_like_transformers(scripted, tiny_model, tmp_path, monkeypatch):
    """The vLLM glue (prompt limit, answer truncation, token counts) against a stand-in vllm module."""
    import sys
    import types

    m, tok, parts = scripted
    rows = {"1": parts["answer"] + tok("7 + 7 = 14", add_special_tokens=False)["input_ids"]}

    class Out:
        def __init__(self, ids):
            self.outputs = [types.SimpleNamespace(token_ids=ids)]

    class LLM:
        def __init__(self, **kw):
            self.kw = kw
            self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=200))

        def generate(self, prompts, params, lora_request=None):
            assert params.temperature == 0.0
            return [Out(rows["1"]) for _ in prompts]

    fake = types.ModuleType("vllm")
    fake.LLM = LLM
    fake.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    probs = [{"id": "a", "question": "What is 3 + 5?", "answer": "8"},
             {"id": "b", "question": "1 + 2 " * 100, "answer": "3"}]
    pf = write_jsonl(tmp_path / "eval.jsonl", probs)
    s = evaluate(EvalConfig(backend="vllm", report=False), pf, tmp_path / "ev", model=str(tiny_model))
    preds = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert preds[0]["output"] == "3 + 5 = 8\n#### 8\n" and preds[0]["tokens"] == len(parts["answer"]) and preds[0]["correct"]
    assert preds[1]["finish_reason"] == "prompt_too_long"
    assert s["AS"] == 50.0 and s["meta"]["backend"] == "vllm"


def test_every_backend_name_has_a_factory_and_eval_config_extends_generation_config():
    assert set(typing.get_args(GenerationConfig.model_fields["backend"].annotation)) == set(BACKENDS)
    assert issubclass(EvalConfig, GenerationConfig)
    assert set(GenerationConfig.model_fields) <= set(EvalConfig.model_fields)


@pytest.mark.parametrize("model,base_url,message", [
    ("m", None, "needs --base-url"),                  # no endpoint
    ("", "http://127.0.0.1:9/v1", "needs --model NAME"),  # no model name at the endpoint
])
def test_make_backend_refuses_missing_inputs_in_one_line(tmp_path, model, base_url, message):
    with pytest.raises(UserError, match=message):
        make_backend(GenerationConfig(backend="openai", base_url=base_url), model, None, tmp_path)
