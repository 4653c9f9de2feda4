"""Real exported files into curate, eval and train (issue 15, cases 6-12): the fixtures in tests/data/exports
(see make_exports.py for the tool each one imitates). Each test states what a user relies on."""

import json
from pathlib import Path

import pytest

from conftest import write_jsonl
from mathdistill.curate import CurateConfig, curate
from mathdistill.errors import UserError
from mathdistill.evaluate import EvalConfig, evaluate
from mathdistill.generate import GenerateConfig, generate
from mathdistill.io import Tally, each_item, get_path, iter_raw, path_beside, write_dataset_files
from mathdistill.prompts import EN_PROMPT, alpaca_rows, messages
from mathdistill.records import id_text, read_problems, render_question, request_error, split_reasoning, whole_number

DATA = Path(__file__).parent / "data" / "exports"
BATCH_CONTENT = "response.body.choices.0.message.content"


def load(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ---- the one dotted-path reader (generate --from-file and curate) -------------------------------------------

@pytest.mark.parametrize("path,value", [
    ("custom_id", "p5"),
    ("response.body.choices.0.finish_reason", "stop"),
    ("response.body.choices.1.finish_reason", "length"),
    ("response.body.choices.-1.message.content", "Let me add 10 and 15 carefully, one digit at a"),
    ("response.body.choices.2.finish_reason", None),  # no third choice
    ("response.body.missing.x", None),
    ("error", None),
])
def test_get_path_reaches_into_a_batch_line(path, value):
    rec = json.loads((DATA / "batch_output.jsonl").read_text().splitlines()[5])
    assert get_path(rec, path) == value


_BODY = {"choices": [{"index": 0, "message": {"content": "#### 8"}, "finish_reason": "stop"}]}


@pytest.mark.parametrize("rec", [
    {"response": {"status_code": 200, "body": _BODY}},                               # JSON Lines
    {"response": json.dumps({"status_code": 200, "body": _BODY})},                   # a JSON column in CSV/BigQuery
    {"response": repr({"status_code": 200, "body": _BODY})},                         # a dict column via pandas to_csv
    {"response.status_code": 200, "response.body": json.dumps(_BODY)},               # pd.json_normalize, then CSV
    {"response.status_code": "200", "response.body.choices": repr(_BODY["choices"])},
])
def test_get_path_reads_nested_fields_an_exporter_wrote_as_text(rec):
    """CSV and Parquet exports keep a nested response as JSON (or Python repr) text, or flatten it into dotted
    column names: the same dotted path reads the content and its choice's finish_reason from any of them."""
    assert get_path(rec, "response.body.choices.0.message.content") == "#### 8"
    assert get_path(rec, "response.body.choices.0.finish_reason") == "stop"
    assert get_path(rec, "response.body.choices.1.finish_reason") is None


_FAILED = {"response": {"status_code": 400, "body": {"error": {"code": "string_above_max_length", "message": "too long"}}},
           "error": None}
_EXPIRED = {"response": None, "error": {"code": "batch_expired", "message": "not run in time"}}


@pytest.mark.parametrize("rec,want", [
    (_FAILED, "HTTP 400 string_above_max_length: too long"),
    ({"response": json.dumps(_FAILED["response"]), "error": ""}, "HTTP 400 string_above_max_length: too long"),
    ({"response.status_code": 400.0, "response.body.error.code": "string_above_max_length",
      "response.body.error.message": "too long", "error": ""}, "HTTP 400 string_above_max_length: too long"),
    (_EXPIRED, "batch_expired: not run in time"),
    ({"response": "", "error": json.dumps(_EXPIRED["error"])}, "batch_expired: not run in time"),
    ({"response": "", "error.code": "batch_expired", "error.message": "not run in time"}, "batch_expired: not run in time"),
    ({"response": {"status_code": 200, "body": _BODY}, "error": None}, None),
    ({"response.status_code": "200", "error": ""}, None),
])
def test_a_failed_batch_request_is_recognised_in_any_export(rec, want):
    """The same failed Batch line, exported as JSON Lines, as JSON text in CSV cells, or flattened
    (pd.json_normalize) into CSV/Parquet columns, is one failed request with its code (never a missing output)."""
    assert request_error(rec) == want


@pytest.mark.parametrize("choices", [_BODY["choices"] * 3, repr(_BODY["choices"] * 3), json.dumps(_BODY["choices"] * 3)])
def test_each_item_walks_every_choice_also_of_a_list_written_as_text(choices):
    rec = {"response.body.choices": choices}
    paths = each_item(rec, "response.body.choices.*.message.content", None)
    assert paths == [(f"response.body.choices.{i}.message.content", None) for i in range(3)]
    assert [get_path(rec, p) for p, _ in paths] == ["#### 8"] * 3


def test_get_path_leaves_text_that_is_not_nested_alone():
    assert get_path({"output": "[1, 2] is a list"}, "output") == "[1, 2] is a list"
    assert get_path({"output": "[1, 2]"}, "output") == "[1, 2]"  # the field itself is returned as written
    assert get_path({"output": "{not json"}, "output.x") is None


def test_a_column_named_with_a_dot_is_read_whole():
    assert get_path({"a.b": 1, "a": {"b": 2}}, "a.b") == 1


def test_path_beside_is_nearest_first():
    assert path_beside(BATCH_CONTENT, "finish_reason")[:3] == [
        "response.body.choices.0.message.finish_reason", "response.body.choices.0.finish_reason",
        "response.body.choices.finish_reason"]
    assert path_beside("content", "finish_reason") == ["finish_reason"]


# ---- case 6: OpenAI Batch output into curate ----------------------------------------------------------------

@pytest.mark.parametrize("choice,finish", [(0, {"p1": "stop", "p2": "length", "p5": "stop"}), (1, {"p5": "length"})])
def test_curate_reads_finish_reason_of_the_same_choice(tmp_path, choice, finish):
    cfg = CurateConfig(plot=False, trace_fields={  # the seed recipe: truncated rows are kept and flagged
        "problem_id_field": "custom_id", "content_field": f"response.body.choices.{choice}.message.content"})
    rep = curate(cfg, DATA / "batch_output.jsonl", [DATA / "batch_problems.jsonl"], tmp_path / "o")
    flagged = {e.split(": ")[1].split(" ")[0] for e in rep["counts"]["examples"].get("flagged: truncated_kept", [])}
    assert flagged == {pid for pid, fr in finish.items() if fr == "length"}
    rows = load(tmp_path / "o" / "dataset.json")
    assert {r["problem_id"] for r in rows} == set(finish)
    if choice == 0:  # the repeated line is no second sample; the failed requests are no (empty) samples
        assert sorted(r["problem_id"] for r in rows) == ["p1", "p1", "p2", "p5"]
        counts, ex = rep["counts"]["counts"], rep["counts"]["examples"]
        assert counts["duplicate_line"] == 1 and ex["duplicate_line"][0].endswith("batch_output.jsonl:1")
        assert counts["request_failed"] == 2 and "null_field: " + cfg.trace_fields.content_field not in counts


@pytest.mark.parametrize("content_field,rows,truncated", [
    ("response.body.choices.*.message.content", ["#### 8", "so #### 8", "let me"], 1),  # n=3: three samples
    ("response.body.choices.1.message.content", ["so #### 8"], 0),
])
def test_curate_reads_every_choice_of_an_n_request(tmp_path, content_field, rows, truncated):
    """A batch request sent with n=3: ``choices.*`` makes each choice a sample, each with its own finish_reason
    (the cut-off third is flagged by the seed recipe)."""
    line = {"custom_id": "p1", "response": {"status_code": 200, "body": {"choices": [
        {"index": i, "message": {"content": c}, "finish_reason": f}
        for i, (c, f) in enumerate([("#### 8", "stop"), ("so #### 8", "stop"), ("let me", "length")])]}}}
    traces = write_jsonl(tmp_path / "b.jsonl", [line])
    cfg = CurateConfig(plot=False, trace_fields={"problem_id_field": "custom_id", "content_field": content_field})
    rep = curate(cfg, traces, [DATA / "batch_problems.jsonl"], tmp_path / "o")
    assert [r["output"] for r in load(tmp_path / "o" / "dataset.json")] == rows
    assert rep["counts"]["counts"].get("flagged: truncated_kept", 0) == truncated


@pytest.mark.parametrize("second,kept", [
    ({"problem_id": "p1", "sample": 0, "content": "#### 8"}, 1),   # the same sample written twice: counted once
    ({"problem_id": "p1", "sample": 1, "content": "#### 8"}, 2),   # another sample with the same text: kept
    ({"problem_id": "p1", "content": "#### 8"}, 2),                # no sample index: dedup's job, not the reader's
])
def test_a_trace_file_appended_twice_is_read_once(tmp_path, second, kept):
    traces = write_jsonl(tmp_path / "t.jsonl", [{"problem_id": "p1", "sample": 0, "content": "#### 8"}, second])
    rep = curate(CurateConfig(plot=False), traces, [DATA / "batch_problems.jsonl"], tmp_path / "o")
    assert rep["rows_out"] == kept and rep["counts"]["counts"].get("duplicate_line", 0) == 2 - kept


# ---- case 8: JSON Lines in a .json file ---------------------------------------------------------------------

def test_json_lines_in_a_json_file_with_a_long_first_record(tmp_path):
    assert len((DATA / "traces_to_json.json").read_text().splitlines()[0]) > 4096
    tally = Tally()
    rows = list(iter_raw(DATA / "traces_to_json.json", tally))
    assert [w.rsplit(":", 1)[1] for w, _ in rows] == ["1", "2", "3"] and not tally.total()
    rep = curate(CurateConfig(plot=False), DATA / "traces_to_json.json", [], tmp_path / "o")
    assert rep["rows_out"] == 3 and rep["counts"]["counts"]["strip_think: modified"] == 2


@pytest.mark.parametrize("body,n,bad", [
    ('[\n  {"question": "a"},\n  {"question": "b"}\n]\n', 2, 0),            # a pretty JSON array
    ('{"data": [{"question": "a"}, {"question": "b"}]}\n', 2, 0),           # one object on one line: a document
    ('{"question": "a"}\n{"question": "b"}\n', 2, 0),                       # JSON Lines
    ('{"question": "a", "broken\n{"question": "b"}\n{"question": "c"}\n', 2, 1),  # JSON Lines, first line broken
    ('{"question": "' + "x" * 9000 + '"}\n\n{"question": "b"}\n', 2, 0),    # a long first line, a blank line
])
def test_json_document_or_json_lines(tmp_path, body, n, bad):
    p = tmp_path / "f.json"
    p.write_text(body)
    tally = Tally()
    assert len(list(iter_raw(p, tally))) == n and tally.counts.get("bad_json", 0) == bad


# ---- case 7: mixed types ------------------------------------------------------------------------------------

def test_problems_with_numbers_and_extra_columns_are_read():
    tally = Tally()
    probs = read_problems(DATA / "problems_mixed.jsonl", tally=tally)
    assert [(p.id, p.answer) for p in probs] == [("1", "5"), ("2", "2.5"), ("3", "6")]
    assert tally.counts == {"missing_question": 1}
    assert tally.examples["missing_question"][0].startswith(f"{DATA / 'problems_mixed.jsonl'}:4")


def test_float_ids_from_pandas_are_whole(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"id": 7.0, "question": "q?", "answer": 1.0}, {"id": 7.5, "question": "r?"}])
    assert [(p.id, p.answer) for p in read_problems(f)] == [("7", "1.0"), ("7.5", None)]


@pytest.mark.parametrize("raw,want", [(7, "7"), (7.0, "7"), ("7.0", "7"), (" 7 ", "7"), ("p7", "p7"), (7.5, "7.5"),
                                      ("1.10", "1.10"), ("007", "007"), (None, None), ("", None),
                                      (float("nan"), None)])  # pandas' missing value
def test_id_text_reads_a_pandas_float_id_as_the_integer_id(raw, want):
    assert id_text(raw) == want


@pytest.mark.parametrize("pid", [1.0, "1.0", 1])
@pytest.mark.parametrize("reader", ["generate", "curate", "eval"])
def test_every_reader_joins_a_float_id_to_the_integer_problem_id(tmp_path, reader, pid):
    """pandas writes an int id column with a gap as 1.0 (JSON) or "1.0" (CSV): the row still belongs to problem 1
    in generate --from-file, curate and eval --predictions, as read_problems already reads the problems file."""
    probs = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "question": "What is 2 + 3?", "answer": 5},
                                               {"id": 2, "question": "What is 6 * 7?", "answer": 42}])
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"problem_id": pid, "question": "not the question text",
                                                  "output": "#### 5", "tokens": 9}])
    if reader == "generate":
        generate(GenerateConfig(id_field="problem_id"), probs, tmp_path / "g", from_file=rows)
        got = [json.loads(x)["problem_id"] for x in (tmp_path / "g" / "traces.jsonl").read_text().splitlines()]
    elif reader == "curate":
        curate(CurateConfig.model_validate({"trace_fields": {"content_field": "output"}}), rows, [probs], tmp_path / "c")
        got = [r["problem_id"] for r in load(tmp_path / "c" / "dataset.json")]
    else:
        evaluate(EvalConfig(report=False), probs, tmp_path / "e", model=None, predictions=rows)
        got = [p["problem_id"] for p in map(json.loads, (tmp_path / "e" / "predictions.jsonl").read_text().splitlines())
               if p["correct"]]
    assert got == ["1"]


@pytest.mark.parametrize("raw,want", [(123, 123), (123.0, 123), ("123.0", 123), (" 7 ", 7), (None, None), ("", None),
                                     (float("nan"), None), ("nan", None)])  # pandas' missing value: no count
def test_whole_number(raw, want):
    assert whole_number(raw) == want


@pytest.mark.parametrize("raw", [12.5, "12.5", "abc", True])
def test_whole_number_refuses(raw):
    with pytest.raises(ValueError):
        whole_number(raw)


# ---- case 9: other reasoning delimiters ---------------------------------------------------------------------

@pytest.mark.parametrize("text,reasoning,content", [
    ("<think>add them</think>The answer is 8.", "add them", "The answer is 8."),
    ("<|begin_of_thought|>\n\n3 + 5 = 8\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n\\boxed{8}\n\n"
     "<|end_of_solution|>", "3 + 5 = 8", "\\boxed{8}"),
    ("<|begin_of_thought|>\n\nstill going, cut off", "still going, cut off", ""),
    ("<reasoning>\n12 * 4 = 48\n</reasoning>\n<answer>\n#### 48\n</answer>", "12 * 4 = 48", "#### 48"),
    ("Okay, 3 + 5 = 8.\n</think>\n\n#### 8", "Okay, 3 + 5 = 8.", "#### 8"),        # R1-distill: template opened it
    ("no tags at all", None, "no tags at all"),
])
def test_split_reasoning_known_tags(text, reasoning, content):
    assert split_reasoning(text) == (reasoning, content)


@pytest.mark.parametrize("text", ["<think>add them</think>The answer is 8.", "<think>still thinking, no end",
                                  "half a thought</think>\n#### 8", "<THINK>a</THINK><think>b</think> 8", "no tags",
                                  "  <think>x</think>y</think>z", "İİ <think>a</think> b"])
def test_split_reasoning_agrees_with_the_client_on_think(text):
    from mathdistill.client import split_think

    assert split_reasoning(text) == split_think(text)


def test_split_reasoning_with_configured_tags():
    text = "[[plan]]add[[/plan]] #### 8"
    assert split_reasoning(text) == (None, text)
    assert split_reasoning(text, [("[[plan]]", "[[/plan]]")]) == ("add", "#### 8")


def test_curate_splits_skythought_sharegpt_rows(tmp_path):
    cfg = CurateConfig(plot=False, keep_think=True, trace_fields={
        "problem_id_field": "id", "question_field": "conversations.0.value", "content_field": "conversations.1.value"})
    rep = curate(cfg, DATA / "skythought.json", [], tmp_path / "o")
    rows = load(tmp_path / "o" / "dataset.json")
    assert rep["rows_in"] == 3 and rep["rows_out"] == 2  # the one cut off inside its thought has no answer
    assert rep["counts"]["counts"]["strip_think: unclosed_think"] == 1
    assert rows[0]["output"] == "<think>\nOkay, so I need to add 3 and 5. 3 + 5 = 8.\n</think>\n\n" \
                                "3 + 5 = 8, so the answer is \\boxed{8}."  # the student's own tags
    assert not any("<|" in r["output"] for r in rows)


def test_curate_r1_distill_and_reasoning_tags(tmp_path):
    rep = curate(CurateConfig(plot=False), DATA / "reasoning_traces.jsonl", [DATA / "batch_problems.jsonl"],
                 tmp_path / "o")
    out = {r["problem_id"]: r["output"] for r in load(tmp_path / "o" / "dataset.json")}
    assert out == {"p1": "Tom has **8** apples.\n#### 8", "p2": "#### 48", "p3": "9 - 4 = 5\n#### 5"}
    assert rep["counts"]["counts"]["strip_think: modified"] == 2


def test_reasoning_tags_config_is_checked():
    with pytest.raises(ValueError, match="two different, non-empty tags"):
        CurateConfig(reasoning_tags=[("<t>", "<t>")])


@pytest.mark.parametrize("name", ["predictions_pandas.jsonl", "predictions_pandas.csv"])
def test_eval_strips_any_reasoning_before_grading_and_reads_float_tokens(tmp_path, name):
    probs = write_jsonl(tmp_path / "eval.jsonl", [{"id": f"q{i}", "question": f"What is {i} + 2?",
                                                   "answer": str(i + 2)} for i in range(4)])
    evaluate(EvalConfig(report=False), probs, tmp_path / "e", model=None, predictions=DATA / name)
    preds = {p["problem_id"]: p for p in map(json.loads, (tmp_path / "e" / "predictions.jsonl").read_text().splitlines())}
    assert {k: p["extracted_answer"] for k, p in preds.items()} == {"q0": "2", "q1": "3", "q2": "4", "q3": "5"}
    assert all(p["correct"] for p in preds.values())
    assert [preds[f"q{i}"]["tokens"] for i in range(4)] == [123, 45, 30, 12]


def test_eval_refuses_a_fractional_token_count(tmp_path):
    probs = write_jsonl(tmp_path / "eval.jsonl", [{"id": "q0", "question": "1 + 1?", "answer": "2"}])
    preds = write_jsonl(tmp_path / "p.jsonl", [{"problem_id": "q0", "output": "#### 2", "tokens": 12.5}])
    with pytest.raises(UserError, match="not a whole number: 12.5"):
        evaluate(EvalConfig(report=False), probs, tmp_path / "e", model=None, predictions=preds)


# ---- case 10: a teacher cut off with no tags ----------------------------------------------------------------

@pytest.mark.parametrize("preset,kept", [("seed", True), ("default", False)])
def test_truncated_without_tags_flagged_by_seed_dropped_by_default(tmp_path, preset, kept):
    from mathdistill.config import load_config
    from mathdistill.run import RunConfig

    cfg = load_config(RunConfig, preset=preset).curate.model_copy(update={"plot": False})
    cfg.trace_fields.problem_id_field, cfg.trace_fields.content_field = "custom_id", BATCH_CONTENT
    rep = curate(cfg, DATA / "batch_output.jsonl", [DATA / "batch_problems.jsonl"], tmp_path / "o")
    ids = [r["problem_id"] for r in load(tmp_path / "o" / "dataset.json")]
    assert ("p2" in ids) is kept
    counts = rep["counts"]["counts"]
    if kept:
        assert rep["flagged"]["truncated_kept"] == counts["flagged: truncated_kept"] == 1
        assert "no reasoning tags" in rep["counts"]["examples"]["flagged: truncated_kept"][0]
        assert "Flagged: 1 training rows" in (tmp_path / "o" / "curate_report.md").read_text()
    else:
        assert rep["flagged"]["truncated_kept"] == 0 and counts["drop_truncated: removed"] == 1


# ---- case 11: questions spread over fields ------------------------------------------------------------------

TEMPLATE = "{question}\\n\\nOptions:\\n{options}"  # as typed on a shell command line


def test_render_question_letters_options_once():
    rows = [json.loads(x) for x in (DATA / "multiple_choice.jsonl").read_text().splitlines()]
    assert render_question(TEMPLATE, rows[0]) == ("Which number is prime?\n\nOptions:\nA. 4\nB. 6\nC. 7\nD. 9", [])
    assert render_question(TEMPLATE, rows[1])[0].endswith("Options:\nA)18\nB)21\nC)24\nD)27")  # already lettered
    assert render_question(TEMPLATE, rows[2]) == (None, ["options"])
    assert render_question("{{literal}} {question}", rows[0])[0] == "{literal} Which number is prime?"
    mmlu = {"question": "2 + 2?", "choices": {"A": "3", "B": "4"}, "meta": {"hint": "add"}}
    assert render_question("{question} ({meta.hint})\n{choices}", mmlu)[0] == "2 + 2? (add)\nA. 3\nB. 4"


@pytest.mark.parametrize("options,rendered", [
    (["4", "7"], "A. 4\nB. 7"),
    ("['4', '7']", "A. 4\nB. 7"),                  # a list column written by pandas to_csv
    ('["4", "7"]', "A. 4\nB. 7"),                  # ... or by json.dumps into a CSV cell
    ("[4, 7.5]", "A. 4\nB. 7.5"),
    ("{'A': '4', 'B': '7'}", "A. 4\nB. 7"),        # a dict column written to CSV
    ("['A)4', 'B)7']", "A)4\nB)7"),                # already lettered, serialized
    ("A) 4\nB) 7", "A) 4\nB) 7"),                 # plain text stays as written
    ("[see figure]", "[see figure]"),             # bracketed text that is not a list stays as written
    ([], None), ("[]", None), ({}, None),         # no options: the row is missing its field
])
def test_render_question_options_as_any_exporter_writes_them(options, rendered):
    q, missing = render_question("{question}\n{options}", {"question": "Pick one.", "options": options})
    assert q == (None if rendered is None else f"Pick one.\n{rendered}")
    assert missing == ([] if rendered is not None else ["options"])


def test_curate_joins_with_a_question_template(tmp_path):
    traces = write_jsonl(tmp_path / "t.jsonl", [{"problem_id": "mc1", "content": "7 is prime. #### C"},
                                                {"problem_id": "mc2", "content": "7 * 3 = 21 #### B"}])
    rep = curate(CurateConfig(plot=False, question_template=TEMPLATE), traces, [DATA / "multiple_choice.jsonl"],
                 tmp_path / "o")
    rows = {r["problem_id"]: r for r in load(tmp_path / "o" / "dataset.json")}
    assert rows["mc1"]["input"] == "Which number is prime?\n\nOptions:\nA. 4\nB. 6\nC. 7\nD. 9"
    assert rows["mc2"]["input"].endswith("B)21\nC)24\nD)27")
    assert rep["counts"]["counts"]["missing_question"] == 1
    assert "'options'" in rep["counts"]["examples"]["missing_question"][0]


def test_a_template_no_row_fits_is_one_error(tmp_path):
    with pytest.raises(UserError, match="question template"):
        read_problems(DATA / "multiple_choice.jsonl", question_template="{question} {choices}")


# ---- case 12: LLaMA-Factory round trip ----------------------------------------------------------------------

def lf_render(row: dict, entry: dict) -> list[dict]:
    """The turns LLaMA-Factory builds from an Alpaca row and its dataset_info entry, as its data/README and
    AlpacaDatasetConverter describe: a column not named in ``columns`` is None (not the documented default);
    user = prompt column + "\\n" + query column (the non-empty ones), system = the system column."""
    cols = entry["columns"]
    query = [row[cols[k]] for k in ("prompt", "query") if cols.get(k) and row.get(cols[k])]
    turns = [{"role": "user", "content": "\n".join(query)}, {"role": "assistant", "content": row[cols["response"]]}]
    system = row.get(cols["system"]) if cols.get("system") else None
    return ([{"role": "system", "content": system}] if system else []) + turns


def test_dataset_info_renders_what_train_and_eval_render(tmp_path):
    rows = [{"instruction": EN_PROMPT, "input": "What is 3 + 5?", "output": "#### 8", "problem_id": "p1",
             "source": "s", "lang": "en"}]
    files = write_dataset_files(rows, tmp_path, "md", ["alpaca_json", "alpaca_jsonl", "parquet"])
    info = load(tmp_path / "dataset_info.json")
    assert set(files) == {"alpaca_json", "alpaca_jsonl", "parquet"}
    for entry in info.values():
        assert entry["formatting"] == "alpaca"
        assert lf_render(rows[0], entry) == messages(EN_PROMPT, "What is 3 + 5?", "#### 8")


def test_llamafactory_alpaca_rows_are_rendered_as_llamafactory_renders_them():
    rows = load(DATA / "lf_alpaca.json")
    entry = {"columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system",
                         "history": "history"}}  # how a LLaMA-Factory user registers such a file
    for row, ours in zip(rows, alpaca_rows(rows, "lf_alpaca.json")):
        assert messages(ours["instruction"], ours["input"], ours["output"]) == lf_render(row, entry)
    own = [{"instruction": EN_PROMPT, "input": "q", "output": "a"}]
    assert alpaca_rows(own, "d.json") == own  # mathdistill's own rows are untouched


@pytest.mark.parametrize("row", [
    {"instruction": "What is 2 + 3?", "input": "", "output": "5"},     # LLaMA-Factory's own alpaca_en_demo shape
    {"instruction": "What is 2 + 3?", "output": "5"},                  # no input column at all
    {"instruction": "What is 2 + 3?", "input": None, "output": "5"},
    {"instruction": "Solve:", "input": "What is 2 + 3?", "output": "5", "system": "Be brief.", "history": []},
    {"instruction": "What is 2 + 3?", "input": "", "output": "5", "system": None, "history": None},
])
def test_a_plain_llamafactory_alpaca_row_is_rendered_as_llamafactory_renders_it(row):
    """A row whose question is in ``instruction`` (empty or no ``input``) is LLaMA-Factory's plain Alpaca: the
    question is the user turn, as LLaMA-Factory renders it; never a system turn before an empty user turn."""
    entry = {"columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}}
    ours = alpaca_rows([row], "lf.json")[0]
    assert messages(ours["instruction"], ours["input"], ours["output"]) == lf_render(row, entry)


def test_llamafactory_history_is_refused_in_one_line():
    with pytest.raises(UserError) as e:
        alpaca_rows(load(DATA / "lf_alpaca_history.json"), "lf_alpaca_history.json")
    assert "lf_alpaca_history.json:#0" in str(e.value) and "history" in str(e.value) and "\n" not in str(e.value)


def test_train_cli_refuses_history_before_loading_a_model(tmp_path, capsys):
    import sys

    from mathdistill import cli

    old = sys.argv
    sys.argv = ["mathdistill", "train", "--dataset", str(DATA / "lf_alpaca_history.json"), "--out", str(tmp_path / "t")]
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    err = capsys.readouterr().err
    assert e.value.code == 2 and "history" in err and len(err.strip().splitlines()) == 1


def test_train_tokenizes_a_llamafactory_row_as_llamafactory_renders_it(tiny_model):
    """Token level: what train feeds the student for a LLaMA-Factory row is the chat template applied to the
    turns LLaMA-Factory builds (system column, then instruction + newline + input)."""
    from mathdistill.models import load_tokenizer, resolve
    from mathdistill.train_data import tokenize_example

    tok = load_tokenizer(resolve(str(tiny_model)))
    entry = {"columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}}
    rows = load(DATA / "lf_alpaca.json")
    for row, ours in zip(rows, alpaca_rows(rows, "lf_alpaca.json")):
        ids, labels = tokenize_example(tok, ours["instruction"], ours["input"], ours["output"])
        want = tok.apply_chat_template(lf_render(row, entry), tokenize=False)
        assert tok.decode(ids) == want
        assert tok.decode([i for i, lab in zip(ids, labels) if lab != -100]).startswith(row["output"])
