"""`mathdistill eval` from the command line: predictions from elsewhere (field mapping), --compare, clear errors."""

import csv
import json
import re

import pytest
from typer.testing import CliRunner

from conftest import write_jsonl
from mathdistill import cli
from mathdistill.evaluate import EvalConfig, PredictionFields, evaluate
from cli_util import run_cli as main

runner = CliRunner()

PROBS = [{"id": f"q{i}", "question": f"What is {i} + 2?", "answer": str(i + 2), "source": "sum"} for i in range(6)]


def test_predictions_csv_with_field_mapping(tmp_path, capsys):
    pf = write_jsonl(tmp_path / "eval.jsonl", PROBS)
    f = tmp_path / "outputs.csv"
    with f.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["qid", "response", "n_tokens"])
        w.writerow(["q0", "0 + 2 = 2\n#### 2", "12"])
        w.writerow(["q1", "#### 4", "3"])           # wrong number
        w.writerow(["q2", "", "1"])                 # empty output
        w.writerow(["q2", "#### 4", "3"])           # duplicate id (line 6: q0 spans two lines): the first one is kept
        w.writerow(["zz", "#### 1", "3"])           # not a problem of this eval
        w.writerow(["q4", "The answer is 6.", "5"])
    code = main(["eval", "--problems", pf, "--out", tmp_path / "ev", "--predictions", f, "--id-field", "qid",
                 "--output-field", "response", "--tokens-field", "n_tokens", "--model-bytes", "98000000",
                 "--max-new-tokens", "256"])
    assert code == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "ev" / "scores.json").read_text())
    assert s["n"] == 6 and s["AS"] == pytest.approx(200 / 6, abs=1e-3)  # q0, q4 right
    assert s["misses"]["empty_output"] == 1 and s["misses"]["missing_prediction"] == 2  # q3, q5
    assert s["meta"]["skipped_rows"]["counts"] == {"duplicate_id": 1, "unknown_problem_id": 1}
    assert any("outputs.csv:6" in x for x in s["meta"]["skipped_rows"]["examples"]["duplicate_id"])
    assert s["meta"]["sampling"]["max_new_tokens"] == 256 and s["meta"]["sampling"]["seed"] is None
    assert s["mean_tokens"] == pytest.approx((12 + 3 + 1 + 0 + 5 + 0) / 6)
    assert (tmp_path / "ev" / "report.html").is_file() and (tmp_path / "ev" / "report.md").is_file()


def test_predictions_without_tokens_are_counted_with_the_model_tokenizer(tmp_path, tiny_model):
    pf = write_jsonl(tmp_path / "eval.jsonl", PROBS[:2])
    preds = write_jsonl(tmp_path / "p.jsonl", [{"problem_id": "q0", "output": "0 + 2 = 2\n#### 2"},
                                               {"problem_id": "q1", "output": "#### 3"}])
    s = evaluate(EvalConfig(report=False), pf, tmp_path / "ev", model=str(tiny_model), predictions=preds)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    n0 = len(tok("0 + 2 = 2\n#### 2", add_special_tokens=False)["input_ids"]) + 1
    rows = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["tokens"] == n0 and s["model_bytes"] > 0 and s["meta"]["model_bytes_known"]


def test_predictions_errors_are_one_line(tmp_path, capsys):
    pf = write_jsonl(tmp_path / "eval.jsonl", PROBS[:2])
    no_tokens = write_jsonl(tmp_path / "p.jsonl", [{"problem_id": "q0", "output": "#### 2"}])
    assert main(["eval", "--problems", pf, "--out", tmp_path / "a", "--predictions", no_tokens]) == 2
    err = capsys.readouterr().err
    assert "p.jsonl:1: no token count" in err and "--tokens-field" in err and "Traceback" not in err
    wrong_map = write_jsonl(tmp_path / "w.jsonl", [{"id": "q0", "text": "#### 2", "tokens": 3}])
    assert main(["eval", "--problems", pf, "--out", tmp_path / "b", "--predictions", wrong_map]) == 2
    err = capsys.readouterr().err
    assert "map them with --id-field / --output-field" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", "--out", tmp_path / "c"]) == 2
    assert "--problems FILE and --out DIR" in capsys.readouterr().err


def test_predictions_bad_lines_and_length_are_misses(tmp_path):
    pf = write_jsonl(tmp_path / "eval.jsonl", PROBS[:3])
    f = tmp_path / "p.jsonl"
    f.write_text('{"problem_id": "q0", "output": "#### 2", "tokens": 4}\nnot json\n'
                 '{"problem_id": "q1", "output": "3 3 3 3 #### 3", "tokens": 256, "finish_reason": "length"}\n')
    s = evaluate(EvalConfig(report=False, model_bytes=10**8), pf, tmp_path / "ev", model=None, predictions=f)
    assert s["meta"]["skipped_rows"]["counts"] == {"bad_json": 1}
    assert s["meta"]["skipped_rows"]["examples"]["bad_json"][0].startswith(f"{f}:2")
    assert s["misses"]["no_stop"] == 1 and s["misses"]["missing_prediction"] == 1 and s["AS"] == pytest.approx(100 / 3, abs=1e-3)


def test_predictions_folder_is_read_and_rescored(tmp_path):
    """An eval folder's own predictions.jsonl is valid input: rescoring it gives the same scores."""
    pf = write_jsonl(tmp_path / "eval.jsonl", PROBS)
    first = write_jsonl(tmp_path / "p.jsonl", [{"problem_id": p["id"], "output": f"#### {p['answer']}", "tokens": 9} for p in PROBS[:4]])
    a = evaluate(EvalConfig(report=False, model_bytes=10**8), pf, tmp_path / "a", model=None, predictions=first)
    b = evaluate(EvalConfig(report=False, model_bytes=10**8), pf, tmp_path / "b", model=None, predictions=tmp_path / "a")
    assert a["AS"] == b["AS"] and a["mean_tokens"] == b["mean_tokens"] and a["intervals"] == b["intervals"]


def test_compare_cli_prints_the_paired_table(tmp_path, capsys):
    pf = write_jsonl(tmp_path / "eval.jsonl", PROBS)
    for name, right in (("a", 2), ("b", 5)):
        preds = write_jsonl(tmp_path / f"{name}.jsonl", [
            {"problem_id": p["id"], "output": f"#### {p['answer'] if i < right else 0}", "tokens": 20} for i, p in enumerate(PROBS)])
        assert main(["eval", "--problems", pf, "--out", tmp_path / name, "--predictions", preds, "--model-bytes", "100000000",
                     "--max-new-tokens", "64", "--seed", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", "--compare", tmp_path / "a", tmp_path / "b"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("AS "))
    assert re.search(r"33\.33\s+83\.33\s+\+50\.00\s+\[\+\d", line), line
    assert "CQS (proxy)" in out and "95% interval of B - A" in out
    # different settings: refused in one line
    preds = write_jsonl(tmp_path / "c.jsonl", [{"problem_id": p["id"], "output": "#### 0", "tokens": 20} for p in PROBS])
    assert main(["eval", "--problems", pf, "--out", tmp_path / "c", "--predictions", preds, "--model-bytes", "100000000",
                 "--max-new-tokens", "128", "--seed", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", "--compare", tmp_path / "a", tmp_path / "c"]) == 2
    err = capsys.readouterr().err
    assert "differ in --max-new-tokens (A: 64, B: 128)" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag,model,field", [
    ("--backend", EvalConfig, "backend"), ("--batch-size", EvalConfig, "batch_size"), ("--cqs", EvalConfig, "cqs"),
    ("--threads", EvalConfig, "threads"),
    ("--tokens-field", PredictionFields, "tokens_field"), ("--id-field", PredictionFields, "id_field"),
])
def test_eval_help_states_config_defaults(flag, model, field):
    out = re.sub(r"\s+", " ", runner.invoke(cli.app, ["eval", "--help"], terminal_width=400).output)
    assert flag in out and f"default: {model.model_fields[field].default}]" in out


def test_eval_transformers_default_cli(tmp_path, tiny_model):
    import torch

    before = torch.get_num_threads()
    pf = write_jsonl(tmp_path / "eval.jsonl", PROBS[:3])
    r = runner.invoke(cli.app, ["eval", "--problems", str(pf), "--out", str(tmp_path / "ev"), "--model", str(tiny_model),
                                "--max-new-tokens", "5", "--limit", "2", "--seed", "4", "--batch-size", "2", "--threads", "1"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "ev" / "scores.json").read_text())
    assert s["n"] == 2 and s["meta"]["comparable"]["limit"] == 2 and s["meta"]["comparable"]["seed"] == 4
    assert s["meta"]["comparable"]["max_new_tokens"] == 5 and s["meta"]["split"]["file_sha256"]
    assert s["meta"]["backend"] == "transformers" and s["meta"]["batch_size"] == 2
    assert torch.get_num_threads() == 1  # --threads reached the backend
    torch.set_num_threads(before)


@pytest.mark.parametrize("finish,correct,tokens", [("stop", True, 7), ("length", False, 7)])
def test_an_openai_batch_output_is_read_as_predictions(tmp_path, capsys, finish, correct, tokens):
    """A model evaluated through the OpenAI Batch API: dotted fields reach the id, the output, its token count
    and the same choice's finish_reason, as generate --from-file and curate read them."""
    pf = write_jsonl(tmp_path / "eval.jsonl", PROBS[:1])
    line = {"custom_id": PROBS[0]["id"], "response": {"status_code": 200, "body": {
        "choices": [{"index": 0, "message": {"content": f"0 + 2 = 2\n#### {PROBS[0]['answer']}"}, "finish_reason": finish}],
        "usage": {"completion_tokens": float(tokens)}}}}
    f = write_jsonl(tmp_path / "batch_output.jsonl", [line])
    c = "response.body.choices.0."
    code = main(["eval", "--problems", pf, "--out", tmp_path / "ev", "--predictions", f, "--id-field", "custom_id",
                 "--output-field", c + "message.content", "--tokens-field", "response.body.usage.completion_tokens",
                 "--set", f"predictions_fields.finish_reason_field={c}finish_reason", "--model-bytes", "98000000"])
    assert code == 0, capsys.readouterr().err
    pred = json.loads((tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()[0])
    assert (pred["correct"], pred["tokens"], pred["finish_reason"]) == (correct, tokens, finish)


@pytest.mark.parametrize("output, tags, correct", [
    # a draft answer inside the model's own reasoning pair is not graded; the answer after it is
    ("The answer is \\boxed{7}. <scratch>check: \\boxed{5}</scratch>", [("<scratch>", "</scratch>")], True),
    ("<scratch>so \\boxed{7}</scratch>", [("<scratch>", "</scratch>")], False),  # it never answered
    # the built-in pairs still apply when none are configured
    ("<think>maybe \\boxed{5}</think> The answer is \\boxed{7}.", None, True),
    ("<|begin_of_thought|>\\boxed{5}<|end_of_thought|><|begin_of_solution|>\\boxed{7}<|end_of_solution|>", None, True),
])
def test_eval_strips_the_configured_reasoning_tags_before_grading(output, tags, correct):
    from mathdistill.backends import Generation
    from mathdistill.evaluate import score_outputs
    from mathdistill.records import Problem

    pred, = score_outputs([Problem(id="p", question="q", answer="7")], [Generation(output, 12, "stop")], tags)
    assert pred.correct is correct
