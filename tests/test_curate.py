import json

import pytest

from conftest import write_jsonl
from mathdistill.client import split_think
from mathdistill.curate import CurateConfig, curate
from mathdistill.errors import UserError
from mathdistill.prompts import EN_PROMPT, ZH_PROMPT
from mathdistill.records import detect_lang


@pytest.mark.parametrize("text,reasoning,content", [
    ("<think>add them</think>The answer is 8.", "add them", "The answer is 8."),     # closed block
    ("<think>still thinking, no end", "still thinking, no end", ""),                  # unclosed at the start
    ("half a thought</think>\n#### 8", "half a thought", "#### 8"),                   # stray closing tag
    ("<THINK>a</THINK><think>b</think> 8", "a\nb", "8"),                                # several blocks, any case
    ("no tags at all", None, "no tags at all"),
])
def test_split_think(text, reasoning, content):
    assert split_think(text) == (reasoning, content)


@pytest.mark.parametrize("question,lang", [
    ("What is 3 + 5?", "en"),
    ("The oven is at 180°C. How hot is it in total?", "en"),      # non-ASCII but English
    ("It costs 5 € per kilo; how much for 3 kilos?", "en"),
    ("“Quoted” question with curly quotes, 2 + 2?", "en"),
    ("小明有 3 个苹果,又买了 5 个,一共几个?", "zh"),
    ("计算 12 + 35", "zh"),
])
def test_language_by_cjk_not_isascii(question, lang):
    assert detect_lang(question) == lang


def _fixture(tmp_path):
    probs = [
        {"id": "p1", "question": "What is 3 + 5?", "answer": "8", "source": "chain_sum"},
        {"id": "p2", "question": "小明有 3 个苹果,又买了 5 个,一共几个?", "answer": "8", "source": "zh"},
        {"id": "p3", "question": "The oven is at 180°C; add 20. What now?", "answer": "200", "source": "chain_sum"},
        {"id": "p4", "question": "Empty one", "answer": "1", "source": "chain_sum"},
    ]
    traces = [
        {"problem_id": "p1", "teacher": "t", "content": "<think>3 and 5</think>3 + 5 = 8\n#### 8"},
        {"problem_id": "p2", "teacher": "t", "content": "3 + 5 = 8\n答案是 8"},
        {"problem_id": "p3", "teacher": "t", "content": "180 + 20 = 200\n#### 200"},
        {"problem_id": "p4", "teacher": "t", "content": "<think>only thoughts</think>"},
        {"problem_id": "nope", "teacher": "t", "content": "orphan"},
    ]
    pp = write_jsonl(tmp_path / "problems.jsonl", probs)
    tp = write_jsonl(tmp_path / "traces.jsonl", traces)
    with tp.open("a") as fh:
        fh.write("{not json\n")
    return pp, tp


def test_seed_recipe_counts_and_alpaca_rows(tmp_path):
    pp, tp = _fixture(tmp_path)
    rep = curate(CurateConfig(), tp, [pp], tmp_path / "out")
    rows = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert rep["rows_in"] == 4 and rep["rows_out"] == 3
    assert {s["step"]: s["removed"] for s in rep["steps"]} == {"strip_think": 0, "drop_empty": 1}
    assert rep["counts"]["counts"]["strip_think: modified"] == 2
    assert rep["counts"]["counts"]["unknown_problem_id"] == 1 and rep["counts"]["counts"]["bad_json"] == 1
    assert any("traces.jsonl:6" in e for e in rep["counts"]["examples"]["bad_json"])
    by_id = {r["problem_id"]: r for r in rows}
    assert by_id["p1"] == {"instruction": EN_PROMPT, "input": "What is 3 + 5?", "output": "3 + 5 = 8\n#### 8",
                           "problem_id": "p1", "source": "chain_sum", "lang": "en"}
    assert by_id["p2"]["instruction"] == ZH_PROMPT
    assert by_id["p3"]["instruction"] == EN_PROMPT
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text())
    assert info["mathdistill"]["file_name"] == "dataset.json"
    # LLaMA-Factory puts the system column in the system turn and prompt (+ query) in the user turn: so our
    # instruction (the system prompt) is its system column and our input (the question) its prompt
    assert info["mathdistill"]["columns"] == {"prompt": "input", "system": "instruction", "response": "output"}


def test_keep_think_puts_reasoning_back(tmp_path):
    pp, tp = _fixture(tmp_path)
    curate(CurateConfig(keep_think=True), tp, [pp], tmp_path / "out")
    rows = {r["problem_id"]: r for r in json.loads((tmp_path / "out" / "dataset.json").read_text())}
    assert rows["p1"]["output"].startswith("<think>\n3 and 5\n</think>")


def test_empty_after_curation_names_the_rule(tmp_path):
    pp = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "question": "q?", "answer": "1"}])
    tp = write_jsonl(tmp_path / "t.jsonl", [{"problem_id": "a", "teacher": "t", "content": "<think>x</think>  "}])
    with pytest.raises(UserError, match="drop_empty removed 1"):
        curate(CurateConfig(), tp, [pp], tmp_path / "out")


def test_unknown_step_is_an_error():
    with pytest.raises(ValueError, match="unknown curate step"):
        CurateConfig(steps=["strip_think", "shuffle_everything"])
