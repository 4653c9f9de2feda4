import pytest

from mathdistill.config import load_config, parse_overrides
from mathdistill.errors import UserError
from mathdistill.io import Tally, prepare_out_dir
from mathdistill.records import FieldMap, read_problems
from mathdistill.run import RunConfig


def test_bad_lines_are_counted_with_file_and_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"question": "1+1?", "answer": "2"}\r\n\r\n{broken\n[1, 2]\n{"question": null}\n'
                  b'{"question": "2+2?"}\n')
    t = Tally()
    probs = read_problems(f, tally=t)
    assert [p.question for p in probs] == ["1+1?", "2+2?"]
    assert t.counts == {"bad_json": 1, "not_an_object": 1, "missing_question": 1}
    assert t.examples["bad_json"][0].startswith(f"{f}:3")
    assert t.examples["missing_question"][0].startswith(f"{f}:5")


def test_missing_question_field_names_the_mapping_option(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"problem": "1+1?", "solution": "2"}\n')
    with pytest.raises(UserError, match="--question-field"):
        read_problems(f)
    probs = read_problems(f, FieldMap(question_field="problem", answer_field="solution"))
    assert probs[0].question == "1+1?" and probs[0].answer == "2"


@pytest.mark.parametrize("suffix,body", [
    (".csv", "question,answer\n1+1?,2\n"),
    (".json", '[{"question": "1+1?", "answer": "2"}]'),
])
def test_readers(tmp_path, suffix, body):
    f = tmp_path / f"p{suffix}"
    f.write_text(body)
    assert read_problems(f)[0].answer == "2"


def test_parquet_reader(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "p.parquet"
    pq.write_table(pa.table({"q": ["1+1?"], "a": ["2"]}), f)
    assert read_problems(f, FieldMap(question_field="q", answer_field="a"))[0].answer == "2"


def test_unknown_config_key_is_one_clear_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochz: 3\n")
    with pytest.raises(UserError, match=r"unknown key 'train.epochz'"):
        load_config(RunConfig, f)


def test_preset_then_file_then_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 5\n")
    cfg = load_config(RunConfig, f, preset="seed", overrides=["train.lora_r=4"])
    assert cfg.train.learning_rate == 8e-5 and cfg.train.epochs == 5 and cfg.train.lora_r == 4


def test_seed_preset_is_the_seed_recipe():
    t = load_config(RunConfig, preset="seed").train
    assert (t.learning_rate, t.epochs, t.lora_r, t.lora_alpha, t.lora_dropout) == (8e-5, 3, 8, 16, 0.1)


def test_overrides_parse_yaml_values():
    assert parse_overrides(["a.b=2", "a.c=[x, y]", "d=true"]) == {"a": {"b": 2, "c": ["x", "y"]}, "d": True}


def test_output_folder_exists_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("1")
    with pytest.raises(UserError, match="--overwrite"):
        prepare_out_dir(tmp_path / "out")
    assert prepare_out_dir(tmp_path / "out", overwrite=True).is_dir()


@pytest.mark.parametrize("name,body", [
    ("d.json", None),    # Dataset.to_json: JSON Lines in a .json file, first record over 4 KB
    ("d.jsonl", None),   # curate's alpaca_jsonl
    ("one.jsonl", 1),    # a JSON Lines file of one row is still a list of rows
])
def test_read_json_reads_json_lines_as_rows(tmp_path, name, body):
    """A training set exported with datasets' to_json (or curate's alpaca_jsonl) given to train is read as its
    rows, not refused as 'Extra data'; a JSON document is still read whole."""
    import json

    from mathdistill.io import read_json
    rows = [{"instruction": "Résous :", "input": "∑ " + "x" * 5000, "output": "#### 1"},
            {"instruction": "", "input": "2 + 2?", "output": "#### 4"}][:body]
    f = tmp_path / name
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert read_json(f) == rows
    doc = tmp_path / "doc.json"
    doc.write_text(json.dumps({"a": [1, 2]}, indent=2))
    assert read_json(doc) == {"a": [1, 2]}
