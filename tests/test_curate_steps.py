"""Each curate step on the messy fixtures in tests/data/curate (see make_fixtures.py for what each line is)."""

import json
from pathlib import Path

import pytest

from mathdistill.curate import CurateConfig, curate, ngrams, words
from mathdistill.errors import UserError

DATA = Path(__file__).parent / "data" / "curate"
TRACES, PROBLEMS, EVAL = DATA / "traces.jsonl", DATA / "problems.jsonl", DATA / "eval.jsonl"
CLEAN = ["strip_think", "drop_empty", "drop_truncated"]


def run(tmp_path, name="out", eval_problems=None, **cfg):
    cfg.setdefault("plot", False)  # the PNG costs a second per run; the report tests draw it
    rep = curate(CurateConfig(**cfg), TRACES, [PROBLEMS], tmp_path / name, eval_problems=eval_problems)
    rows = json.loads((tmp_path / name / "dataset.json").read_text(encoding="utf-8"))
    return rep, rows


def kept(rows):
    """problem id -> outputs kept, in order."""
    out = {}
    for r in rows:
        out.setdefault(r["problem_id"], []).append(r["output"])
    return out


def removed(rep):
    return {s["step"]: s["removed"] for s in rep["steps"]}


def test_messy_input_never_crashes_and_every_bad_line_is_named(tmp_path):
    rep, rows = run(tmp_path)
    c, ex = rep["counts"]["counts"], rep["counts"]["examples"]
    assert {k: c[k] for k in ("bad_json", "not_an_object", "blank_line", "missing_question", "null_field: content",
                              "null_field: problem_id", "unknown_problem_id", "bad_field: content")} == {
        "bad_json": 2, "not_an_object": 1, "blank_line": 2, "missing_question": 1, "null_field: content": 1,
        "null_field: problem_id": 1, "unknown_problem_id": 1, "bad_field: content": 1}
    assert f"{TRACES}:13: Expecting value" in ex["bad_json"]  # file:line, counted past the BOM and CRLF
    assert f"{PROBLEMS}:7: Expecting value" in ex["bad_json"]
    assert ex["strip_think: unclosed_think"] == [f"{TRACES}:5: p02"]
    assert rep["rows_in"] == 27 and removed(rep) == {"strip_think": 0, "drop_empty": 2}
    # the BOM in the middle of the file did not cost its line; CRLF inside a text became \n
    assert "9 + 9 = 18. The answer is 18 again, a longer way to say it." in kept(rows)["p12"]
    assert kept(rows)["p05"][0] == "15 × 3 = 45\n答案：４５元"
    assert rep["languages_in"] == {"en": 19, "zh": 8}


def test_drop_truncated(tmp_path):
    rep, rows = run(tmp_path, steps=CLEAN)
    assert removed(rep)["drop_truncated"] == 1
    assert "Let me compute 9 + 9 = 18 and then" not in kept(rows)["p12"]


def test_verify_answer_is_rejection_sampling(tmp_path):
    rep, rows = run(tmp_path, steps=CLEAN + ["verify_answer"])
    k = kept(rows)
    assert k["p01"] == ["3 + 5 = 8\nThe answer is 8.",
                        "Tom starts with 3 apples. He buys 5 more apples. 3 + 5 = 8. So he has 8 apples now.\nThe answer is 8."]
    assert k["p04"] == ["20 / 80 = 0.25, so the answer is 25%.", "The answer is 0.25"]  # 0.25 == 25%
    assert len(k["p05"]) == 1 and len(k["p13"]) == 1  # full-width answers graded as ASCII
    assert rep["counts"]["counts"]["verify_answer: wrong"] == 3
    assert rep["counts"]["counts"]["verify_answer: kept_no_reference"] == 5  # p06, p07: no reference, kept
    ref = rep["agreement"]["reference"]
    assert (ref["traces"], ref["correct"], ref["problems"]) == (19, 16, 11)
    assert rep["grader"]["fast_share"] == 1.0 and rep["grader"]["total"] == 19

    rep2, rows2 = run(tmp_path, "drop", steps=CLEAN + ["verify_answer"], verify_answer={"no_reference": "drop"})
    assert "p06" not in kept(rows2) and rep2["counts"]["counts"]["verify_answer: no_reference"] == 5


def test_majority_vote_labels_problems_without_reference(tmp_path):
    rep, rows = run(tmp_path, steps=CLEAN + ["majority_vote", "verify_answer"], verify_answer={"no_reference": "drop"})
    p06 = [r for r in rows if r["problem_id"] == "p06"]
    assert [r["output"] for r in p06] == ["60 * 2 = 120\nThe answer is 120 miles.", "It goes 120 miles.\n#### 120"]
    assert {(r["answer"], r["agreement"]) for r in p06} == {("120", 0.6667)}
    assert "p07" not in kept(rows)  # 24 vs 10: a tie labels nothing
    c = rep["counts"]["counts"]
    assert c["majority_vote: tie"] == 2 and c["majority_vote: disagrees"] == 1
    assert "answer" not in next(r for r in rows if r["problem_id"] == "p01")  # references are not repeated
    mv = rep["agreement"]["majority_vote"]
    assert (mv["problems"], mv["labelled"]) == (2, 1)

    rep2, _ = run(tmp_path, "strict", steps=CLEAN + ["majority_vote"], majority_vote={"min_agreement": 0.7})
    assert rep2["counts"]["counts"]["majority_vote: low_agreement"] == 3  # 2/3 < 0.7: p06 not labelled


def test_select_shortest_correct_or_all_up_to_k(tmp_path):
    _, rows = run(tmp_path, steps=CLEAN + ["verify_answer", "select"])
    k = kept(rows)
    assert k["p01"] == ["3 + 5 = 8\nThe answer is 8."]  # the shortest correct one
    assert all(len(v) == 1 for v in k.values())
    _, rows = run(tmp_path, "all", steps=CLEAN + ["verify_answer", "select"], select={"mode": "all", "k": 2})
    k = kept(rows)
    assert len(k["p01"]) == 2 and len(k["p06"]) == 2 and len(k["p09"]) == 2


def test_arith_check_drops_or_keeps_wrong_steps(tmp_path):
    rep, rows = run(tmp_path, steps=CLEAN + ["arith_check"])
    assert kept(rows)["p09"] == ["7 * 6 = 42\nThe answer is 42."]
    assert f"{TRACES}:22: p09 (7 * 6 = 43 (is 42))" in rep["counts"]["examples"]["arith_check: wrong_step"]
    rep, rows = run(tmp_path, "keep", steps=CLEAN + ["arith_check"], arith_check={"action": "keep"})
    assert len(kept(rows)["p09"]) == 2 and removed(rep)["arith_check"] == 0
    assert rep["counts"]["counts"]["arith_check: wrong_step_kept"] == 3  # 3 + 5 = 9, 15 * 3 = 35, 7 * 6 = 43


ARITH_Q = {"a": ("What is 7 * 6?", "42"), "b": ("Tom has 3 apples and buys 5 more. How many now?", "8"),
           "c": ("A family eats 2 + 3 + 3 pizzas a day. How many in 30 days?", "240"), "d": ("What is 5 + 7?", None)}


@pytest.mark.parametrize("problem,output,expected", [
    # family: a wrong result written once, the answer does not rest on it: that number is fixed
    ("a", "7 * 6 = 43\nThe answer is 42.", "7 * 6 = 42\nThe answer is 42."),
    ("c", "2 + 3 + 3 = 9 pizzas a day.\n8 * 30 = 240 pizzas.\n#### 240", "2 + 3 + 3 = 8 pizzas a day.\n8 * 30 = 240 pizzas.\n#### 240"),
    # family: the chain went on with the wrong value: recomputed, kept because the answer now equals the reference
    ("b", "3 + 5 = 9\nThe answer is 9.", "3 + 5 = 8\nThe answer is 8."),
    ("c", "2 + 3 + 3 = 9 pizzas a day.\n9 * 30 = 270 pizzas.\n#### 270", "2 + 3 + 3 = 8 pizzas a day.\n8 * 30 = 240 pizzas.\n#### 240"),
    # family: a repair that does not give a consistent, verified chain is dropped and counted
    ("a", "7 * 6 = 43\n43 + 1 = 44\nThe answer is 44.", "unrepairable_answer"),  # recomputed: 43, not 42
    ("d", "5 + 7 = 13\nThe answer is 13.", "unrepairable_no_reference"),       # answer changed, nothing to check it
    ("a", "12 + 35 = 50 + 35 = 85\nThe answer is 42.", "unrepairable_expression"),
    ("a", "0.2 * 100 = 25%\nThe answer is 42.", "unrepairable_format"),
    # family: right chains pass untouched
    ("a", "7 * 6 = 42\n#### 42", "7 * 6 = 42\n#### 42"),
])
def test_arith_check_repair(tmp_path, problem, output, expected):
    probs = tmp_path / "p.jsonl"
    probs.write_text("".join(json.dumps({"id": k, "question": q, "answer": a}) + "\n" for k, (q, a) in ARITH_Q.items()))
    traces = tmp_path / "t.jsonl"
    traces.write_text(json.dumps({"problem_id": problem, "content": output}) + "\n")
    cfg = CurateConfig(steps=["arith_check"], arith_check={"action": "repair"}, plot=False)
    if expected.startswith("unrepairable"):
        with pytest.raises(UserError, match="empty after curation"):
            curate(cfg, traces, [probs], tmp_path / "o")
        rep = json.loads((tmp_path / "o" / "curate_report.json").read_text())
        assert rep["counts"]["counts"] == {f"arith_check: {expected}": 1}
        assert rep["steps"][0]["removed"] == 1 and rep["steps"][0]["repaired"] == 0
        return
    rep = curate(cfg, traces, [probs], tmp_path / "o")
    rows = json.loads((tmp_path / "o" / "dataset.json").read_text())
    assert [r["output"] for r in rows] == [expected]
    changed = int(expected != output)
    assert rep["steps"][0]["repaired"] == changed and rep["steps"][0]["removed"] == 0
    assert rep["counts"]["counts"].get("arith_check: repaired", 0) == changed


def test_arith_check_repair_in_the_report_and_with_think(tmp_path):
    rep, rows = run(tmp_path, steps=CLEAN + ["arith_check"], arith_check={"action": "repair"}, plot=True)
    k = kept(rows)
    assert "7 * 6 = 42\nThe answer is 42." in k["p09"] and "3 + 5 = 8\nThe answer is 8." in k["p01"]
    assert "15 * 3 = 45\n答案是45" in k["p05"]
    arith = next(s for s in rep["steps"] if s["step"] == "arith_check")
    assert (arith["repaired"], arith["steps_repaired"], arith["removed"]) == (3, 3, 0)
    c = rep["counts"]["counts"]
    assert (c["arith_check: repaired"], c["arith_check: steps_repaired"], c["arith_check: later_uses_repaired"]) == (3, 3, 2)
    assert f"{TRACES}:22: p09 (7 * 6 = 43 -> 42)" in rep["counts"]["examples"]["arith_check: repaired"]
    md = (tmp_path / "out" / "curate_report.md").read_text(encoding="utf-8")
    assert "## Repaired per step" in md and "| arith_check | 3 | 3 |" in md
    assert (tmp_path / "out" / "curate_report.png").stat().st_size > 10_000
    # with keep_think the think part is checked and repaired too, and stays a think part
    traces = tmp_path / "t.jsonl"
    traces.write_text(json.dumps({"problem_id": "p09", "content": "<think>7 * 6 = 43, so 43</think>The answer is 43."}) + "\n")
    rep = curate(CurateConfig(steps=["strip_think", "arith_check"], keep_think=True, arith_check={"action": "repair"},
                              plot=False), traces, [PROBLEMS], tmp_path / "k")
    out = json.loads((tmp_path / "k" / "dataset.json").read_text())[0]["output"]
    assert out == "<think>\n7 * 6 = 42, so 42\n</think>\n\nThe answer is 42."


def test_length_filter_in_student_tokens(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rep, rows = run(tmp_path, steps=CLEAN + ["length_filter"], tokenizer=str(tiny_model),
                    length_filter={"min_tokens": 5, "max_tokens": 60})
    n = [len(tok(r["output"], add_special_tokens=False)["input_ids"]) for r in rows]
    assert rows and all(5 <= x <= 60 for x in n)
    c = rep["counts"]["counts"]
    assert c["length_filter: too_long"] >= 2 and removed(rep)["length_filter"] == c["length_filter: too_long"] + c.get("length_filter: too_short", 0)
    assert rep["lengths"]["unit"] == f"{tiny_model} tokens" and rep["lengths"]["after"]["max"] <= 60


def test_tokenizer_is_loaded_only_when_a_step_needs_it(tmp_path):
    rep, _ = run(tmp_path, steps=CLEAN + ["select"], tokenizer="no-such-model")  # select by chars: no tokenizer
    assert rep["lengths"]["unit"] == "characters"
    with pytest.raises(UserError, match="no-such-model"):
        run(tmp_path, "tok", steps=CLEAN + ["select"], tokenizer="no-such-model", select={"by": "tokens"})


def test_decontaminate_against_eval_questions(tmp_path):
    rep, rows = run(tmp_path, steps=CLEAN + ["decontaminate"], eval_problems=[EVAL])
    assert "p08" not in kept(rows)  # shares 13+ words with e1
    assert "p09" in kept(rows)  # "What is 7 * 6?" is short: compared whole with "What is 6 * 7?"
    assert rep["counts"]["examples"]["decontaminate: eval_overlap"] == [f"{TRACES}:21: p08 (eval problem e1)"]
    # a longer n-gram than the overlap finds nothing
    _, rows = run(tmp_path, "n40", steps=CLEAN + ["decontaminate"], eval_problems=[EVAL], decontaminate={"ngram": 40})
    assert "p08" in kept(rows)
    with pytest.raises(UserError, match="--eval-problems"):
        run(tmp_path, "none", steps=CLEAN + ["decontaminate"])


def test_words_and_ngrams():
    assert words("计算 １２ + ３５") == ["计", "算", "12", "+", "35"]
    assert ngrams(["a", "b", "c"], 2) == {("a", "b"), ("b", "c")}
    assert ngrams(["a"], 13) == {("a",)} and ngrams([], 3) == set()


def test_dedup_near_duplicates_across_problems(tmp_path):
    # p10/p11: true Jaccard 0.83 over 5-word shingles (MinHash estimates it within a few hundredths)
    rep, rows = run(tmp_path, steps=CLEAN + ["dedup"], dedup={"threshold": 0.7})
    assert "p10" in kept(rows) and "p11" not in kept(rows)
    assert rep["counts"]["examples"]["dedup: near_duplicate"] == [f"{TRACES}:25: p11 (of {TRACES}:24)"]
    _, rows = run(tmp_path, "strict", steps=CLEAN + ["dedup"], dedup={"threshold": 0.99})
    assert "p11" in kept(rows)  # not similar enough at 0.99


def test_dedup_keeps_what_datasketch_minhashlsh_keeps(tmp_path):
    """Our band index must find the same near duplicates as datasketch's MinHashLSH + MinHash.jaccard."""
    import random

    from datasketch import MinHash, MinHashLSH

    from mathdistill.curate import shingle_hashes

    rng = random.Random(3)
    vocab = sorted({"".join(rng.choice("abcdefghij") for _ in range(5)) for _ in range(300)})  # words() keeps them whole
    docs = []
    for i in range(240):
        if i >= 40 and rng.random() < 0.4:  # a copy of an earlier document with 1-3 words changed
            d = list(docs[rng.randrange(len(docs))])
            for _ in range(rng.randint(1, 3)):
                d[rng.randrange(len(d))] = rng.choice(vocab)
        else:
            d = [rng.choice(vocab) for _ in range(rng.randint(60, 90))]
        docs.append(d)
    probs = [{"id": f"q{i}", "question": f"question {i}", "answer": "1"} for i in range(len(docs))]
    traces = [{"problem_id": f"q{i}", "teacher": "t", "content": " ".join(d)} for i, d in enumerate(docs)]
    from conftest import write_jsonl

    pp, tp = write_jsonl(tmp_path / "p.jsonl", probs), write_jsonl(tmp_path / "t.jsonl", traces)
    curate(CurateConfig(steps=["dedup"], dedup={"key": "output", "threshold": 0.7}, plot=False), tp, [pp], tmp_path / "o")
    ours = [r["problem_id"] for r in json.loads((tmp_path / "o" / "dataset.json").read_text())]

    lsh, kept, ref = MinHashLSH(threshold=0.7, num_perm=128), {}, []
    for i, h in enumerate(shingle_hashes(docs, 5)):
        m = MinHash(num_perm=128, seed=1, hashfunc=int)
        m.update_batch(h)
        if any(kept[j].jaccard(m) >= 0.7 for j in lsh.query(m)):
            continue
        lsh.insert(i, m)
        kept[i] = m
        ref.append(f"q{i}")
    assert ours == ref and 140 < len(ref) < 220, len(ref)  # many copies removed, not all


def test_dedup_exact_duplicates(tmp_path):
    traces = tmp_path / "t.jsonl"
    line = json.dumps({"problem_id": "p01", "teacher": "t", "content": "3 + 5 = 8\nThe answer is 8."})
    traces.write_text(f"{line}\n{line}\n", encoding="utf-8")
    rep = curate(CurateConfig(steps=["dedup"]), traces, [PROBLEMS], tmp_path / "o")
    assert rep["rows_out"] == 1 and rep["counts"]["counts"]["dedup: exact_duplicate"] == 1


FULL = dict(steps=CLEAN + ["majority_vote", "verify_answer", "arith_check", "select", "decontaminate", "dedup"],
            formats=["alpaca_json", "alpaca_jsonl", "sharegpt", "messages", "parquet"], dedup={"threshold": 0.7}, plot=True)


def test_same_input_and_config_same_bytes(tmp_path):
    run(tmp_path, "a", eval_problems=[EVAL], **FULL)
    run(tmp_path, "b", eval_problems=[EVAL], **FULL)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert {"curate_report.json", "curate_report.md", "curate_report.png", "dataset.parquet"} <= set(files)
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_writers_and_dataset_info(tmp_path):
    import pyarrow.parquet as pq

    rep, rows = run(tmp_path, eval_problems=[EVAL], **FULL)
    out = tmp_path / "out"
    info = json.loads((out / "dataset_info.json").read_text())
    assert {k: v["file_name"] for k, v in info.items()} == {
        "mathdistill": "dataset.json", "mathdistill_alpaca_jsonl": "dataset.jsonl",
        "mathdistill_sharegpt": "dataset_sharegpt.json", "mathdistill_messages": "dataset_messages.jsonl",
        "mathdistill_parquet": "dataset.parquet"}
    assert info["mathdistill_messages"]["tags"]["system_tag"] == "system"
    jsonl = [json.loads(x) for x in (out / "dataset.jsonl").read_text(encoding="utf-8").splitlines()]
    assert jsonl == rows
    share = json.loads((out / "dataset_sharegpt.json").read_text(encoding="utf-8"))
    msgs = [json.loads(x) for x in (out / "dataset_messages.jsonl").read_text(encoding="utf-8").splitlines()]
    table = pq.read_table(out / "dataset.parquet").to_pylist()
    assert len(share) == len(msgs) == len(table) == len(rows) == rep["rows_out"]
    for r, s, m, t in zip(rows, share, msgs, table):
        assert s["system"] == r["instruction"] and s["conversations"] == [
            {"from": "human", "value": r["input"]}, {"from": "gpt", "value": r["output"]}]
        assert [x["role"] for x in m["messages"]] == ["system", "user", "assistant"]
        assert m["messages"][2]["content"] == r["output"] and m["problem_id"] == r["problem_id"]
        assert (t["instruction"], t["input"], t["output"], t["problem_id"]) == (
            r["instruction"], r["input"], r["output"], r["problem_id"])


def test_report_markdown_and_png(tmp_path):
    rep, _ = run(tmp_path, eval_problems=[EVAL], **FULL)
    md = (tmp_path / "out" / "curate_report.md").read_text(encoding="utf-8")
    for s in rep["steps"]:
        assert f"| {s['step']} | {s['in']} | {s['out']} | {s['removed']} |" in md
    assert "## Languages" in md and "| zh |" in md and "vs reference: 16 of 19" in md
    assert "![curate report](curate_report.png)" in md
    assert (tmp_path / "out" / "curate_report.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "out" / "curate_report.json").read_text(encoding="utf-8"))
    assert saved["rows_out"] == rep["rows_out"] and "timing" not in saved and "timing" in rep


def test_self_contained_csv_export_with_field_mapping(tmp_path):
    cfg = CurateConfig(steps=CLEAN + ["verify_answer"], formats=["alpaca_jsonl"],
                       trace_fields={"problem_id_field": "id", "question_field": "problem", "answer_field": "gold",
                                     "content_field": "response", "finish_reason_field": "stop"})
    rep = curate(cfg, DATA / "export.csv", [], tmp_path / "o")
    rows = [json.loads(x) for x in (tmp_path / "o" / "dataset.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["problem_id"], r["lang"]) for r in rows] == [("q1", "en"), ("q2", "zh")]
    assert rep["counts"]["counts"]["verify_answer: wrong"] == 1
    assert rep["counts"]["examples"]["unknown_problem_id"] == [f"{DATA / 'export.csv'}:8: q3"]  # its first line


def test_parquet_traces_with_nested_fields(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"pid": "p01", "response": {"choices": [{"message": {"content": "The answer is 8."}}]}},
        {"pid": "p01", "response": {"choices": [{"message": {"content": None}}]}},
    ]), f)
    cfg = CurateConfig(trace_fields={"problem_id_field": "pid", "content_field": "response.choices.0.message.content"})
    rep = curate(cfg, f, [PROBLEMS], tmp_path / "o")
    assert rep["rows_out"] == 1 and rep["counts"]["counts"]["null_field: response.choices.0.message.content"] == 1


def test_yaml_steps_and_per_step_options(tmp_path):
    from mathdistill.config import load_config
    from mathdistill.run import RunConfig

    y = tmp_path / "run.yaml"
    y.write_text("curate:\n  steps: [strip_think, verify_answer, select]\n  select: {mode: all, k: 3}\n"
                 "  formats: [messages, parquet]\n", encoding="utf-8")
    c = load_config(RunConfig, y).curate
    assert (c.steps, c.select.mode, c.select.k, c.formats) == (["strip_think", "verify_answer", "select"], "all", 3,
                                                              ["messages", "parquet"])
    assert c.dedup.threshold == 0.85 and c.decontaminate.ngram == 13  # the other steps keep their defaults
    y.write_text("curate:\n  select: {mode: longest}\n", encoding="utf-8")
    with pytest.raises(UserError, match="curate.select.mode"):
        load_config(RunConfig, y)
    y.write_text("curate:\n  dedup: {treshold: 0.5}\n", encoding="utf-8")
    with pytest.raises(UserError, match="unknown key 'curate.dedup.treshold'"):
        load_config(RunConfig, y)


def test_default_config_is_the_seed_recipe():
    c = CurateConfig()
    assert c.steps == ["strip_think", "drop_empty"] and c.formats == ["alpaca_json"] and not c.keep_think
    with pytest.raises(ValueError, match="listed twice"):
        CurateConfig(steps=["dedup", "dedup"])


def test_cli_curate_verb(tmp_path):
    from typer.testing import CliRunner

    from mathdistill import cli

    r = CliRunner().invoke(cli.app, ["curate", "-t", str(TRACES), "-p", str(PROBLEMS), "-o", str(tmp_path / "o"),
                                     "--steps", "strip_think,drop_empty,verify_answer,decontaminate",
                                     "--format", "alpaca_json,sharegpt", "-e", str(EVAL)])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "o" / "curate_report.json").read_text(encoding="utf-8"))
    assert [s["step"] for s in rep["steps"]] == ["strip_think", "drop_empty", "verify_answer", "decontaminate"]
    assert (tmp_path / "o" / "dataset_sharegpt.json").is_file()
    help_text = CliRunner().invoke(cli.app, ["curate", "--help"]).output
    assert "--eval-problems" in help_text and "default: ['strip_think', 'drop_empty']" in " ".join(help_text.split())
