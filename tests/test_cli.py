"""The CLI through Typer's runner: clear one-line errors, exit codes, defaults stated once."""

import re

import pytest
from typer.testing import CliRunner

from mathdistill import cli
from mathdistill.evaluate import EvalConfig
from mathdistill.train import TrainConfig

runner = CliRunner()


def invoke(args):
    """Run like the console script does (main() turns UserError into one line and an exit code)."""
    import sys

    old = sys.argv
    sys.argv = ["mathdistill", *args]
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    return e.value.code


def test_missing_file_is_one_line_no_traceback(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text('{"id": "a", "question": "1+1?"}\n')
    code = invoke(["curate", "--traces", str(tmp_path / "nope.jsonl"), "--problems", str(tmp_path / "p.jsonl"),
                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "traces file not found" in err and "nope.jsonl" in err
    assert not (tmp_path / "o").exists(), "nothing is written when an input is missing"
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_config_key_exit_code(tmp_path, capsys):
    c = tmp_path / "run.yaml"
    c.write_text("trian:\n  epochs: 1\n")
    assert invoke(["config", "--config", str(c)]) == 2
    assert "unknown key 'trian'" in capsys.readouterr().err


def test_problems_verb_refuses_non_empty_out(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert invoke(["problems", "--out", str(out), "--preset", "smoke"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_problems_verb_writes_files(tmp_path):
    r = runner.invoke(cli.app, ["problems", "--out", str(tmp_path / "p"), "--preset", "smoke"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p" / "train.jsonl").is_file() and (tmp_path / "p" / "eval.jsonl").is_file()


def test_config_show_has_every_section():
    r = runner.invoke(cli.app, ["config", "--preset", "seed", "--set", "train.epochs=1"])
    assert r.exit_code == 0
    for section in ("problems:", "generate:", "curate:", "train:", "eval:"):
        assert section in r.output
    assert "epochs: 1" in r.output and "learning_rate: 8.0e-05" in r.output


@pytest.mark.parametrize("verb,flag,model,field", [
    ("train", "--lr", TrainConfig, "learning_rate"), ("train", "--epochs", TrainConfig, "epochs"),
    ("eval", "--max-new-tokens", EvalConfig, "max_new_tokens"), ("eval", "--seed", EvalConfig, "seed"),
])
def test_help_defaults_come_from_the_config_models(verb, flag, model, field):
    out = re.sub(r"\s+", " ", runner.invoke(cli.app, [verb, "--help"], terminal_width=400).output)
    assert flag in out
    assert f"default: {model.model_fields[field].default}]" in out


def test_help_lists_every_stage():
    r = runner.invoke(cli.app, ["--help"])
    for verb in ("problems", "generate", "curate", "train", "eval", "report", "run"):
        assert re.search(rf"\b{verb}\b", r.output)
