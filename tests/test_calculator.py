"""Calculator-aware decoding: which text gets a forced result (a table), and the forcing itself inside a
batch of sequences of different lengths, with the KV cache and batch pruning (a scripted tiny model)."""

from __future__ import annotations

import pytest
import torch

from conftest import scripted_model
from mathdistill.arith import MAX_DIGITS
from mathdistill.backends import generate_batched
from mathdistill.calculator import Calculator, result_for
from mathdistill.models import load, resolve

# (text the model has written so far, what the calculator writes next; None: leave it to the model)
CASES = [
    # basic operators and spacing: a space after "=" only when the chain puts one before it
    ("12 + 30 =", " 42"),
    ("12+30=", "42"),
    ("So 7 * 6 = ", "42"),
    ("100 - 58 =", " 42"),
    ("3 - 5 =", " -2"),
    ("-3 + 5 =", " 2"),
    ("22 x 11 =", " 242"),
    ("3x4 =", " 12"),
    ("6 × 7 =", " 42"),
    ("84 ÷ 2 =", " 42"),
    ("84 / 2 =", " 42"),
    # precedence and parentheses
    ("2 + 3 * 4 =", " 14"),
    ("(2 + 3) * 4 =", " 20"),
    ("the total (12 + 30) =", " 42"),
    ("2 * (3 + (4 - 1)) =", " 12"),
    # thousands separators keep their style
    ("1,234 + 1,000 =", " 2,234"),
    ("1,500 * 3 =", " 4,500"),
    # percentages
    ("25% of 96 =", " 24"),
    ("25% * 96 =", " 24"),
    ("20% + 5% =", " 25%"),
    # decimals and fractions in the chain's style
    ("10 / 4 =", " 2.5"),
    ("10 / 3 =", " 3.33"),
    ("0.1 + 0.2 =", " 0.3"),
    ("1.5 * 2 =", " 3"),
    ("2.50 * 3 =", " 7.50"),
    ("1.25 + 2.5 =", " 3.75"),
    ("1/2 + 1/4 =", " 3/4"),
    ("$12 × 3 =", " $36"),
    # the expression is the end of the last line, after words and earlier steps
    ("He has 5 apples and 3 more, 5 + 3 =", " 8"),
    ("Step 1: 12 + 30 =", " 42"),
    ("2 + 3 = 5\n5 * 2 =", " 10"),
    ("3 + 4 = 7 + 1 =", " 8"),
    # not arithmetic: left alone
    ("2024-05-01 =", None),
    ("05/01/2024 =", None),
    ("the ratio is 3:4 =", None),
    ("3:4 + 1 =", None),
    ("call 555-123-4567 =", None),
    ("call 555-1234 =", None),
    ("2x + 3 =", None),
    ("2x + 3 * 4 =", None),
    ("x2 + 3 =", None),
    ("a - 3 + 5 =", None),
    ("f(2 + 3) =", None),
    ("= 5 =", None),
    ("5 =", None),
    ("50% =", None),
    # left to the model
    ("10 / 0 =", None),
    ("5 + 10 / (3 - 3) =", None),
    ("10 ** 40 =", None),
    ("12 + 30", None),
    ("3 + 4 ==", None),
    ("3 + 4 <=", None),
    ("", None),
    ("=", None),
]


@pytest.mark.parametrize("text,expected", CASES)
def test_result_for(text, expected):
    assert result_for(text) == expected


def test_long_input_is_bounded_and_huge_results_are_left_alone():
    import time

    t0 = time.monotonic()
    assert result_for("1" + " + 1" * 5000 + " =") is None  # longer than an expression may be
    assert result_for("(" * 3000 + "1 =") is None
    assert time.monotonic() - t0 < 0.5
    assert result_for("9" * 16 + " * " + "9" * 16 + " =") is None  # 32 digits
    assert result_for("9" * 10 + " * " + "9" * 10 + " =") == " " + str(int("9" * 10) ** 2)
    assert len(str(int("9" * 10) ** 2)) <= MAX_DIGITS


# ------------------------------------------------------------------------------------------ token level


@pytest.fixture(scope="module")
def scripted(tiny_model):
    _, tok = load(resolve(str(tiny_model)))
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    nl = enc("\n")[0]
    m = scripted_model(tiny_model, key="first", fallback=nl)
    eos = tok.eos_token_id
    for piece in (" 7", " 8", " 42", " 5", "."):
        assert len(enc(piece)) == 1, f"the test assumes {piece!r} is one token"
    # prompt -> (script, output without the calculator, output with it)
    cases = {
        "A: 12 + 30 =": (enc("1") * 3 + enc(" apples") + [eos], "111 apples", " 42\n1 apples"),
        # "= " ends the prompt; the model then writes "5" "." "." "5": the forced 42 may take a "." but no digit after it
        "B: so 7 * 6 = ": (enc(" 5") + enc(".") + enc(".") + enc("5") + enc(" ok") + [eos], " 5..5 ok", "42.\n ok"),
        "Ccc: John has 35 apples. He buys 93 more.": (enc(" John has 35 apples") + [eos], " John has 35 apples",
                                                        " John has 35 apples"),
        "D: now": (enc(" so 3 + 4 =") + enc(" 8") + enc(" ok") + [eos], " so 3 + 4 = 8 ok", " so 3 + 4 = 7 ok"),
    }
    m.scripts = {enc(p)[0]: c[0] for p, c in cases.items()}
    assert len(m.scripts) == len(cases)
    return m, tok, cases


@pytest.mark.parametrize("batch_size,prune_every", [(4, 2), (4, None), (1, 8)])
def test_forcing_in_a_batch_of_different_lengths(scripted, batch_size, prune_every):
    m, tok, cases = scripted
    prompts = list(cases)
    assert len({len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts}) == len(prompts)
    off = generate_batched(m, tok, prompts, max_new_tokens=12, batch_size=batch_size, prune_every=prune_every)
    on = generate_batched(m, tok, prompts, max_new_tokens=12, batch_size=batch_size, prune_every=prune_every, calculator=True)
    assert [g.output for g in off] == [c[1] for c in cases.values()]
    assert [g.output for g in on] == [c[2] for c in cases.values()]
    assert [g.calculator_forced for g in on] == [1, 1, 0, 1]
    assert [g.calculator_forced for g in off] == [0, 0, 0, 0]
    for g in on:  # token counts are those of the text as written
        assert g.finish_reason == "stop"


def test_forced_text_round_trips_through_the_tokenizer(tiny_model):
    _, tok = load(resolve(str(tiny_model)))
    calc = Calculator(tok)
    texts = ["12 + 30 =", "7 * 6 = ", "so 1,234 + 1,000 =", "10 / 4 =", "1/2 + 1/4 =", "25% of 96 =", "2.50 * 3 =",
             "3 - 5 =", "小明有 3 + 5 ="]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        forced_text = result_for(text)
        forced = calc.forced_ids(ids, forced_text)
        assert forced, text
        assert tok.decode(ids + forced) == text + forced_text
    # in context, the forced ids are the tokenizer's own: " 42" after " =" is one token, as it would be written
    ids = tok("12 + 30 =", add_special_tokens=False)["input_ids"]
    assert calc.forced_ids(ids, " 42") == tok(" 42", add_special_tokens=False)["input_ids"]


def test_the_number_cannot_be_extended(tiny_model):
    """After a forced result, no token that starts with a digit or with '.'/',' + digit may come next."""
    _, tok = load(resolve(str(tiny_model)))
    calc = Calculator(tok)
    from mathdistill.calculator import CalcState

    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    st = CalcState()
    ids = enc("12 + 30 =")
    scores = torch.zeros(1, len(tok))
    calc.apply(scores, [ids[-2:]], lambda j, n: ids[-n:], [st])
    (forced,) = torch.nonzero(scores[0] == 0).flatten().tolist()
    assert tok.decode([forced]) == " 42" and st.forced == 1
    ids = ids + [forced]
    scores = torch.zeros(1, len(tok))
    calc.apply(scores, [ids[-2:]], lambda j, n: ids[-n:], [st])
    allowed = {tok.decode([i]) for i in torch.nonzero(scores[0] == 0).flatten().tolist()}
    banned = {tok.decode([i]) for i in torch.nonzero(scores[0] == float("-inf")).flatten().tolist()}
    assert {"1", "2", "0"} <= banned and not any(t[:1].isdigit() for t in allowed)
    assert "." in allowed and "\n" in allowed and " apples" in allowed
    # a lone "." next: then no digit (42.5), but a space or newline is fine
    ids = ids + enc(".")
    scores = torch.zeros(1, len(tok))
    calc.apply(scores, [ids[-2:]], lambda j, n: ids[-n:], [st])
    assert scores[0, enc("5")[0]] == float("-inf") and scores[0, enc("\n")[0]] == 0
    # and then the model is free again
    ids = ids + enc("\n")
    scores = torch.zeros(1, len(tok))
    calc.apply(scores, [ids[-2:]], lambda j, n: ids[-n:], [st])
    assert bool((scores == 0).all())


def test_eval_calculator_is_recorded_and_refused_where_unsupported(tiny_model, tmp_path):
    from conftest import write_jsonl
    from mathdistill.errors import UserError
    from mathdistill.evaluate import EvalConfig, evaluate
    from mathdistill.io import read_json

    probs = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "question": "12 + 30 =", "answer": "42"},
                                               {"id": "b", "question": "7 * 6 =", "answer": "42"}])
    evaluate(EvalConfig(max_new_tokens=4, calculator=True, report=False), probs, tmp_path / "on", model=str(tiny_model))
    s = read_json(tmp_path / "on" / "scores.json")
    assert s["meta"]["sampling"]["calculator"] is True and s["meta"]["config"]["calculator"] is True
    assert "calculator_forced" in s["meta"] and s["step_accuracy"] in (None, 100.0)
    for backend in ("openai", "vllm"):
        with pytest.raises(UserError, match="--calculator works with --backend transformers only"):
            evaluate(EvalConfig(backend=backend, calculator=True, base_url="http://127.0.0.1:9/v1"), probs,
                     tmp_path / backend, model="m")


@pytest.mark.timeout(120)
def test_serve_calculator_forces_per_row(tiny_model):
    """`serve --calculator`: each row of a batched /v1/completions request gets its own exact result."""
    import re

    import httpx

    from mathdistill.serve import ServeConfig, create_app
    from server_thread import ServerThread

    model, tok = load(resolve(str(tiny_model)))
    app = create_app(model, tok, ServeConfig(calculator=True, threads=1, batch_wait_ms=50), name="tiny")
    with ServerThread(app) as s:
        r = httpx.post(s.url + "/v1/completions", json={"prompt": ["12 + 30 =", "so 7 * 6 = ", "John has"],
                                                         "max_tokens": 4, "temperature": 0}, timeout=60)
    assert r.status_code == 200, r.text
    texts = [c["text"] for c in sorted(r.json()["choices"], key=lambda c: c["index"])]
    assert texts[0].startswith(" 42") and not re.match(r"[.,]?\d", texts[0][3:])
    assert texts[1].startswith("42") and not re.match(r"[.,]?\d", texts[1][2:])
    assert r.json()["usage"]["completion_tokens"] == 12


def test_cli_calculator_flag(tiny_model, tmp_path):
    """`mathdistill eval ... --model RUN_OR_MODEL --calculator` through the CLI; unsupported backends: one line."""
    from typer.testing import CliRunner

    from conftest import write_jsonl
    from mathdistill import cli
    from mathdistill.io import read_json

    probs = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "question": "12 + 30 =", "answer": "42"}])
    r = CliRunner().invoke(cli.app, ["eval", "--problems", str(probs), "--out", str(tmp_path / "e"), "--model", str(tiny_model),
                                     "--calculator", "--max-new-tokens", "3"])
    assert r.exit_code == 0, r.output
    assert read_json(tmp_path / "e" / "scores.json")["meta"]["sampling"]["calculator"] is True
    r = CliRunner().invoke(cli.app, ["eval", "--problems", str(probs), "--out", str(tmp_path / "o"), "--model", "m",
                                     "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--calculator"])
    from mathdistill.errors import UserError

    assert isinstance(r.exception, UserError) and "--calculator works with --backend transformers only" in str(r.exception)
