"""`mathdistill generate` end to end: the real command against a local fault-injecting server.

Covers: one trace per (problem, sample), failures.jsonl and exit code 3, a rerun that retries only the
failures, kill -9 and Ctrl-C mid-run then rerun (subprocesses), the key in no written file, --no-cache,
--from-file import, the vllm backend's message without a GPU.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mathdistill
from conftest import write_jsonl
from mathdistill import cli

KEY = "sk-mathdistill-test-5f3a9c1e7b"
SRC = str(Path(mathdistill.__file__).resolve().parents[1])


def problems(tmp_path, n=6, name="problems.jsonl"):
    return write_jsonl(tmp_path / name, [{"id": f"p{i}", "question": f"<q{i}> Tom has {i} apples. How many?",
                                          "answer": str(i)} for i in range(n)])


def invoke(args, capsys=None):
    old = sys.argv
    sys.argv = ["mathdistill", *map(str, args)]
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = old
    return code


def openai_args(srv, probs, out, *extra):
    return ["generate", "--problems", probs, "--out", out, "--backend", "openai", "--base-url", srv.base_url,
            "--model", "teacher-x", "--set", "backoff_s=0.01", *extra]


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def assert_complete(out, n, samples):
    traces = read(out / "traces.jsonl")
    assert sorted((t["problem_id"], t["sample"]) for t in traces) == sorted(
        (f"p{i}", k) for i in range(n) for k in range(samples)), "exactly one trace per problem and sample"
    return traces


def test_traces_have_every_field_and_summary_counts(server, tmp_path):
    srv = server(faults={"<q1>": ["429", "503"]}, reasoning="inline")
    out = tmp_path / "g"
    assert invoke(openai_args(srv, problems(tmp_path), out, "--samples", "2", "--seed", "7")) == 0
    traces = assert_complete(out, 6, 2)
    t = traces[0]
    assert t["teacher"] == "teacher-x" and t["reasoning"].startswith("Let me think about: <q0>")
    assert t["content"].startswith("Final answer") and "<think>" not in t["content"]
    assert t["finish_reason"] == "stop" and t["prompt_tokens"] > 0 and t["completion_tokens"] > 0
    assert t["latency_s"] >= 0
    s = json.loads((out / "generate_summary.json").read_text())
    assert s["calls"]["retries"] == 2 and s["calls"]["ok"] == 12 and s["calls"]["cached"] == 0
    assert s["calls"]["prompt_tokens"] > 0 and s["failed"] == 0 and read(out / "failures.jsonl") == []
    assert s["config"]["seed"] == 7 and s["inputs"]


def test_failures_are_recorded_exit_3_and_a_rerun_retries_only_them(server, tmp_path, capsys):
    srv = server(faults={"<q2>": ["500"] * 3, "<q4>": ["400"]})
    out = tmp_path / "g"
    args = openai_args(srv, problems(tmp_path), out, "--max-retries", "2")
    assert invoke(args) == 3
    err = capsys.readouterr().err
    assert "2 of 6 samples failed" in err and "failures.jsonl" in err and "Traceback" not in err
    fails = {f["problem_id"]: f for f in read(out / "failures.jsonl")}
    assert fails["p2"]["reason"] == "http_500" and fails["p2"]["attempts"] == 3
    assert fails["p4"]["reason"] == "http_400" and fails["p4"]["attempts"] == 1
    assert len(read(out / "traces.jsonl")) == 4
    summary = json.loads((out / "generate_summary.json").read_text())
    assert summary["failed_by_reason"] == {"http_400": 1, "http_500": 1}

    before = len(srv.log)
    assert invoke(args) == 0, "same command, same folder: a resume, no --overwrite needed"
    assert sorted(c.question.split()[0] for c in srv.log[before:]) == ["<q2>", "<q4>"]
    assert_complete(out, 6, 1)
    assert read(out / "failures.jsonl") == []
    for i in range(6):
        assert srv.paid(f"<q{i}>") == 1


def test_the_key_is_in_no_written_file(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MATHDISTILL_API_KEY", KEY)
    srv = server(faults={"<q3>": ["500"] * 2, "<q1>": ["429:0"]})
    out = tmp_path / "g"
    code = invoke(openai_args(srv, problems(tmp_path), out, "--max-retries", "1", "--samples", "2"))
    assert code == 3
    assert srv.log and all(c.authorization == f"Bearer {KEY}" for c in srv.log), "the key was sent"
    written = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"traces.jsonl", "failures.jsonl", "generate_summary.json", "cache.sqlite"}
    for p in written:
        assert KEY.encode() not in p.read_bytes(), f"key found in {p}"
    logs = capsys.readouterr()
    assert KEY not in logs.out + logs.err


def test_no_cache_writes_no_cache_and_calls_again(server, tmp_path):
    srv = server()
    out = tmp_path / "g"
    args = openai_args(srv, problems(tmp_path, 3), out, "--no-cache")
    assert invoke(args) == 0 and invoke(args) == 0
    assert not (out / "cache.sqlite").exists()
    assert len(srv.log) == 6
    assert_complete(out, 3, 1)


def test_a_foreign_folder_still_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "g"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert invoke(["generate", "--problems", problems(tmp_path), "--out", out]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_reference_backend_reruns_into_its_folder(tmp_path):
    probs = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "question": "1+1?", "meta": {"reference_cot": "1+1=2\n#### 2"}}])
    out = tmp_path / "g"
    assert invoke(["generate", "--problems", probs, "--out", out]) == 0
    assert invoke(["generate", "--problems", probs, "--out", out]) == 0
    assert read(out / "traces.jsonl")[0]["content"] == "1+1=2\n#### 2"


def subprocess_env():
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), MATHDISTILL_API_KEY=KEY)
    env.pop("COLUMNS", None)
    return env


def _sigint_default() -> None:
    # A shell without job control starts background jobs with SIGINT ignored, and the ignore is inherited: Python
    # then installs no KeyboardInterrupt handler and Ctrl-C does nothing (`make test &` made the Ctrl-C test fail).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cli(srv, probs, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "mathdistill", *map(str, openai_args(srv, probs, out, *extra))],
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_default)


def wait_for_answers(srv, n, proc, timeout=60):
    t0 = time.monotonic()
    while srv.paid() < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "the run did not get going"
        time.sleep(0.02)


def committed_questions(out):
    db = sqlite3.connect(out / "cache.sqlite")
    try:
        return {json.loads(r[0])["messages"][-1]["content"].split()[0] for r in db.execute("SELECT request_json FROM calls")}
    finally:
        db.close()


def test_kill_9_mid_run_then_rerun_repeats_no_finished_call(server, tmp_path):
    n = 40
    srv = server(delay_s=0.05)
    out = tmp_path / "g"
    probs = problems(tmp_path, n)
    proc = start_cli(srv, probs, out, "--concurrency", "4", "--samples", "2")
    wait_for_answers(srv, 16, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.2)  # calls that were in flight finish server-side
    finished = committed_questions(out)
    assert 4 <= len(finished) < n, "killed mid-run with some calls finished"
    before = len(srv.log)
    rerun = subprocess.run([sys.executable, "-m", "mathdistill", *map(str, openai_args(srv, probs, out, "--samples", "2"))],
                           env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    again = {c.question.split()[0] for c in srv.log[before:]}
    assert not again & finished, f"finished calls sent again: {sorted(again & finished)}"
    assert again | finished == {f"<q{i}>" for i in range(n)}
    for i in range(n):
        assert sum(c.choices for c in srv.log[before:] if c.question.startswith(f"<q{i}>")) in (0, 2)
    traces = assert_complete(out, n, 2)
    assert len({(t["problem_id"], t["sample"]) for t in traces}) == len(traces) == 2 * n


def test_ctrl_c_stops_cleanly_and_keeps_what_finished(server, tmp_path):
    n = 40
    srv = server(delay_s=0.05)
    out = tmp_path / "g"
    probs = problems(tmp_path, n)
    proc = start_cli(srv, probs, out, "--concurrency", "4")
    wait_for_answers(srv, 8, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    traces = read(out / "traces.jsonl")
    # the server answered 8; at most 4 (the concurrency) may still have been in flight at the client
    assert 8 - 4 <= len(traces) < n and len(traces) == len(committed_questions(out))
    fails = read(out / "failures.jsonl")
    assert len(traces) + len(fails) == n and {f["reason"] for f in fails} <= {"not_attempted"}
    assert json.loads((out / "generate_summary.json").read_text())["interrupted"] is True
    before = len(srv.log)
    assert invoke(openai_args(srv, probs, out)) == 0
    assert len(srv.log) - before == n - len(traces)
    assert_complete(out, n, 1)


# ---- --from-file --------------------------------------------------------------------------------------------

def test_from_file_imports_with_a_field_mapping_and_reports_bad_lines(tmp_path, capsys):
    rows = [
        {"prompt": "What is 2+3?", "ref": "5", "resp": {"text": "<think>2+3=5</think>The answer is 5."}},
        "{not json",
        {"prompt": "What is 2+3?", "ref": "5", "resp": {"text": "5"}, "why": "added"},  # second sample
        {"prompt": "小明有 3 个苹果,又买了 5 个。", "resp": {"text": "答案是 8"}},
        {"prompt": "No output here", "resp": {}},
        {"resp": {"text": "no question"}},
    ]
    export = tmp_path / "export.jsonl"
    export.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                      encoding="utf-8")
    out = tmp_path / "g"
    code = invoke(["generate", "--from-file", export, "--out", out, "--question-field", "prompt", "--answer-field", "ref",
                   "--output-field", "resp.text", "--reasoning-field", "why"])
    assert code == 0
    traces = read(out / "traces.jsonl")
    probs = {p["id"]: p for p in read(out / "problems.jsonl")}
    assert len(traces) == 3 and len(probs) == 2
    first, second, zh = traces
    assert first["reasoning"] == "2+3=5" and first["content"] == "The answer is 5." and first["sample"] == 0
    assert second["problem_id"] == first["problem_id"] and second["sample"] == 1 and second["reasoning"] == "added"
    assert probs[first["problem_id"]]["answer"] == "5" and probs[zh["problem_id"]]["lang"] == "zh"
    skipped = json.loads((out / "generate_summary.json").read_text())["skipped"]
    assert skipped["counts"] == {"bad_json": 1, "missing_output": 1, "missing_question": 1}
    assert skipped["examples"]["bad_json"][0].startswith(f"{export}:2")
    assert skipped["examples"]["missing_output"][0].startswith(f"{export}:5")
    err = capsys.readouterr().err
    assert f"{export}:6" in err and "skipped 3" in err


def test_from_file_joins_an_openai_batch_output_to_problems_by_id(tmp_path):
    probs = problems(tmp_path, 3)
    batch = [{"custom_id": f"p{i}", "response": {"body": {"choices": [{"message": {
        "content": f"answer {i}", "reasoning_content": f"thinking {i}"}}]}}} for i in (0, 2, 9)]
    export = write_jsonl(tmp_path / "batch_output.jsonl", batch)
    out = tmp_path / "g"
    assert invoke(["generate", "--from-file", export, "--problems", probs, "--out", out, "--id-field", "custom_id",
                   "--output-field", "response.body.choices.0.message.content",
                   "--reasoning-field", "response.body.choices.0.message.reasoning_content", "--model", "r1"]) == 0
    traces = read(out / "traces.jsonl")
    assert [(t["problem_id"], t["content"], t["reasoning"], t["teacher"]) for t in traces] == [
        ("p0", "answer 0", "thinking 0", "r1"), ("p2", "answer 2", "thinking 2", "r1")]
    assert not (out / "problems.jsonl").exists(), "the user's problems file is the one to curate with"
    summary = json.loads((out / "generate_summary.json").read_text())
    assert summary["skipped"]["counts"] == {"unknown_problem": 1}


EXPORTS = Path(__file__).parent / "data" / "exports"
BATCH_CONTENT = "response.body.choices.{}.message.content"


@pytest.mark.parametrize("choice,expected", [
    (0, [("p1", 0, "stop"), ("p2", 0, "length"), ("p5", 0, "stop"), ("p1", 1, "stop")]),
    (1, [("p5", 0, "length")]),
])
def test_from_file_openai_batch_output_finish_reason_duplicates_and_errors(tmp_path, choice, expected):
    """The real Batch output shape: finish_reason read from the same choice as the content, the exact repeated
    line (a resubmitted batch) counted and not a second sample, failed requests counted with file:line."""
    export = EXPORTS / "batch_output.jsonl"
    out = tmp_path / "g"
    assert invoke(["generate", "--from-file", export, "--problems", EXPORTS / "batch_problems.jsonl", "--out", out,
                   "--id-field", "custom_id", "--output-field", BATCH_CONTENT.format(choice)]) == 0
    traces = read(out / "traces.jsonl")
    assert [(t["problem_id"], t["sample"], t["finish_reason"]) for t in traces] == expected
    skipped = json.loads((out / "generate_summary.json").read_text())["skipped"]
    assert skipped["counts"]["duplicate_line"] == 1
    assert skipped["examples"]["duplicate_line"] == [f"{export}:3: same record as {export}:1"]
    if choice == 0:
        assert skipped["counts"]["request_failed"] == 2
        assert [e.split(": ", 1)[0] for e in skipped["examples"]["request_failed"]] == [f"{export}:4", f"{export}:5"]
        assert "batch_expired" in skipped["examples"]["request_failed"][0]
        assert "HTTP 400 unsupported_parameter" in skipped["examples"]["request_failed"][1]


def test_from_file_finish_reason_field_can_be_named(tmp_path):
    out = tmp_path / "g"
    assert invoke(["generate", "--from-file", EXPORTS / "batch_output.jsonl", "--problems",
                   EXPORTS / "batch_problems.jsonl", "--out", out, "--id-field", "custom_id", "--output-field",
                   BATCH_CONTENT.format(0), "--finish-reason-field", "response.body.choices.1.finish_reason"]) == 0
    assert [t["finish_reason"] for t in read(out / "traces.jsonl")] == [None, None, "length", None]


def test_problems_with_numbers_and_extra_columns_reach_the_teacher(server, tmp_path, capsys):
    """Integer ids and answers and extra columns are accepted as curate and eval accept them (they were all
    dropped with exit 0); the row without a question is counted with file:line."""
    srv = server()
    probs = EXPORTS / "problems_mixed.jsonl"
    out = tmp_path / "g"
    assert invoke(openai_args(srv, probs, out)) == 0
    assert sorted(t["problem_id"] for t in read(out / "traces.jsonl")) == ["1", "2", "3"]
    assert sorted(c.question for c in srv.log) == ["What is 10 - 4?", "What is 2 + 3?", "What is half of 5?"]
    skipped = json.loads((out / "generate_summary.json").read_text())["skipped"]
    assert skipped["counts"] == {"missing_question": 1}
    assert skipped["examples"]["missing_question"][0].startswith(f"{probs}:4")


def test_from_file_matches_integer_ids(tmp_path):
    out = tmp_path / "g"
    assert invoke(["generate", "--from-file", EXPORTS / "batch_output_mixed.jsonl", "--problems",
                   EXPORTS / "problems_mixed.jsonl", "--out", out, "--id-field", "custom_id",
                   "--output-field", BATCH_CONTENT.format(0)]) == 0
    assert [(t["problem_id"], t["content"]) for t in read(out / "traces.jsonl")] == [
        ("1", "#### 5"), ("2", "#### 2.5"), ("3", "#### 6")]


def test_question_template_builds_what_the_teacher_sees(server, tmp_path):
    srv = server()
    out = tmp_path / "g"
    assert invoke(openai_args(srv, EXPORTS / "multiple_choice.jsonl", out, "--question-template",
                              "{question}\\n\\nOptions:\\n{options}")) == 0
    assert sorted(c.question for c in srv.log) == [
        "A pen costs 3 dollars. What do 7 pens cost?\n\nOptions:\nA)18\nB)21\nC)24\nD)27",
        "Which number is prime?\n\nOptions:\nA. 4\nB. 6\nC. 7\nD. 9"]
    skipped = json.loads((out / "generate_summary.json").read_text())["skipped"]
    assert skipped["counts"] == {"missing_question": 1} and "'options'" in skipped["examples"]["missing_question"][0]


def test_from_file_question_template_and_skythought_tags(tmp_path):
    rows = [{"q": "Which is prime?", "opts": ["4", "7"], "out": "<|begin_of_thought|>7 has no divisors"
             "<|end_of_thought|><|begin_of_solution|>#### B<|end_of_solution|>"}]
    export = write_jsonl(tmp_path / "mc.jsonl", rows)
    out = tmp_path / "g"
    assert invoke(["generate", "--from-file", export, "--out", out, "--output-field", "out",
                   "--question-template", "{q}\\nOptions:\\n{opts}"]) == 0
    [t] = read(out / "traces.jsonl")
    [p] = read(out / "problems.jsonl")
    assert p["question"] == "Which is prime?\nOptions:\nA. 4\nB. 7"
    assert (t["reasoning"], t["content"]) == ("7 has no divisors", "#### B")


def test_from_file_with_a_wrong_mapping_is_one_clear_error(tmp_path, capsys):
    export = write_jsonl(tmp_path / "e.jsonl", [{"q": "1+1?", "a": "2"}])
    assert invoke(["generate", "--from-file", export, "--out", tmp_path / "g"]) == 2
    err = capsys.readouterr().err
    assert "no usable row" in err and "missing_output" in err and len(err.strip().splitlines()) == 1


def test_generate_needs_problems_or_a_file(tmp_path, capsys):
    assert invoke(["generate", "--out", tmp_path / "g"]) == 2
    assert "--problems" in capsys.readouterr().err


# ---- vllm ---------------------------------------------------------------------------------------------------

def _has_vllm_gpu():
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_has_vllm_gpu(), reason="vLLM and a GPU are present: the real backend test runs instead")
def test_vllm_backend_without_vllm_or_gpu_is_one_line(tmp_path, capsys):
    code = invoke(["generate", "--problems", problems(tmp_path), "--out", tmp_path / "g", "--backend", "vllm",
                   "--model", "some/model"])
    err = capsys.readouterr().err
    assert code == 2 and "vllm" in err.lower() and "GPU" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "vllm" not in sys.modules, "nothing imported vllm"


@pytest.mark.gpu
@pytest.mark.skipif(not _has_vllm_gpu(), reason="needs vLLM and a CUDA GPU")
def test_vllm_backend_on_gpu(tmp_path, tiny_model):
    out = tmp_path / "g"
    args = ["generate", "--problems", problems(tmp_path, 4), "--out", out, "--backend", "vllm", "--model", tiny_model,
            "--samples", "2", "--max-tokens", "16", "--seed", "0"]
    assert invoke(args) == 0
    assert_complete(out, 4, 2)
    assert invoke(args) == 0
    assert json.loads((out / "generate_summary.json").read_text())["calls"]["cached"] == 8


def test_vllm_glue_with_a_stand_in_module(tmp_path, monkeypatch):
    """Our side of the vllm backend (grouping samples into n=, cache rows, traces, rerun from cache) with a
    stand-in for the vllm module that has its API shape; the real vLLM runs only in the GPU test above."""
    import types

    import torch

    seen = []

    class SamplingParams:
        def __init__(self, n=1, temperature=1.0, top_p=1.0, max_tokens=16, seed=None, **extra):
            self.n, self.seed, self.extra = n, seed, extra

    class LLM:
        def __init__(self, model, seed=0, trust_remote_code=False):
            assert trust_remote_code is False

        def chat(self, convs, sps, use_tqdm=True):
            seen.append(len(convs))
            out = []
            for conv, sp in zip(convs, sps):
                q = conv[-1]["content"]
                outs = [types.SimpleNamespace(index=i, text=f"<think>t {q}</think>a{i} {q}", token_ids=[1] * (3 + i),
                                              finish_reason="stop") for i in range(sp.n)]
                out.append(types.SimpleNamespace(prompt_token_ids=[1] * 5, outputs=outs, metrics=None))
            return out

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out = tmp_path / "g"
    args = ["generate", "--problems", problems(tmp_path, 3), "--out", out, "--backend", "vllm", "--model", "m",
            "--samples", "2", "--extra-body", '{"top_k": 5}']
    assert invoke(args) == 0
    traces = assert_complete(out, 3, 2)
    assert traces[1]["content"].startswith("a1 <q0>") and traces[1]["reasoning"].startswith("t <q0>")
    assert traces[1]["completion_tokens"] == 4 and traces[1]["prompt_tokens"] == 5
    assert seen == [3], "one batch, the samples of a prompt as n="
    assert invoke(args) == 0 and seen == [3], "a rerun is answered from the cache"
    assert json.loads((out / "generate_summary.json").read_text())["calls"]["cached"] == 6


def test_help_shows_the_config_defaults():
    import re

    from typer.testing import CliRunner

    from mathdistill.generate import GenerateConfig

    text = re.sub(r"\s+", " ", CliRunner().invoke(cli.app, ["generate", "--help"], terminal_width=400).output)
    for flag, field in [("--concurrency", "concurrency"), ("--max-retries", "max_retries"), ("--timeout", "timeout_s"),
                        ("--samples", "samples"), ("--output-field", "output_field"), ("--rpm", "rpm")]:
        assert flag in text and f"[config: {field}; default: {GenerateConfig.model_fields[field].default}]" in text


def test_a_repeated_problem_id_is_counted_with_its_line(server, tmp_path):
    srv = server()
    probs = write_jsonl(tmp_path / "p.jsonl", [{"id": 1, "question": "What is 1 + 1?", "answer": 2},
                                               {"id": "1", "question": "What is 2 + 2?", "answer": 4}])
    out = tmp_path / "g"
    assert invoke(openai_args(srv, probs, out)) == 0
    assert [t["problem_id"] for t in read(out / "traces.jsonl")] == ["1"] and len(srv.log) == 1
    skipped = json.loads((out / "generate_summary.json").read_text())["skipped"]
    assert skipped["examples"]["duplicate_id"] == [f"{probs}:2: 1 (the first one is kept)"]


def _batch_line(req_id, custom_id, content, finish="stop"):
    return {"id": req_id, "custom_id": custom_id, "error": None, "response": {"status_code": 200, "request_id": req_id,
            "body": {"id": f"chatcmpl-{req_id}", "choices": [{"index": 0, "message": {"role": "assistant",
                     "content": content}, "finish_reason": finish}]}}}


@pytest.mark.parametrize("second,samples,duplicates", [
    (_batch_line("batch_req_b", "p1", "#### 1"), [0], 1),     # resubmitted: new request ids, same answer
    (_batch_line("batch_req_a", "p1", "#### 1"), [0], 1),     # the same output file appended again
    (_batch_line("batch_req_b", "p1", "so #### 1"), [0, 1], 0),  # resubmitted and sampled again: a new sample
])
def test_from_file_a_resubmitted_batch_request_is_not_a_second_sample(tmp_path, second, samples, duplicates):
    """A custom_id answered twice with the same text is one sample, as curate counts it (duplicate_line), even
    when the batch and request ids differ (a resubmitted batch); a different text is another sample."""
    probs = write_jsonl(tmp_path / "p.jsonl", [{"id": "p1", "question": "1 + 0?", "answer": "1"}])
    export = write_jsonl(tmp_path / "batch.jsonl", [_batch_line("batch_req_a", "p1", "#### 1"), second])
    out = tmp_path / "g"
    assert invoke(["generate", "--from-file", export, "--problems", probs, "--out", out, "--id-field", "custom_id",
                   "--output-field", BATCH_CONTENT.format(0)]) == 0
    assert [t["sample"] for t in read(out / "traces.jsonl")] == samples
    skipped = json.loads((out / "generate_summary.json").read_text())["skipped"]
    assert skipped["counts"].get("duplicate_line", 0) == duplicates


def _n_line(custom_id, choices):
    return {"id": f"batch_req_{custom_id}", "custom_id": custom_id, "error": None, "response": {"status_code": 200,
            "body": {"choices": [{"index": i, "message": {"role": "assistant", "content": c}, "finish_reason": f}
                                 for i, (c, f) in enumerate(choices)]}}}


@pytest.mark.parametrize("field,expected", [
    ("response.body.choices.*.message.content", [("p1", 0, "#### 1", "stop"), ("p1", 1, "so #### 1", "stop"),
                                                 ("p1", 2, "let me", "length"), ("p2", 0, "#### 2", "stop")]),
    ("response.body.choices.0.message.content", [("p1", 0, "#### 1", "stop"), ("p2", 0, "#### 2", "stop")]),
    ("response.body.choices.2.message.content", [("p1", 0, "let me", "length")]),
])
def test_from_file_n_choices_are_samples_with_their_own_finish_reason(tmp_path, field, expected):
    """A batch request sent with n=3 holds 3 choices: ``choices.*`` imports each as a sample, each with the
    finish_reason of its own choice; a fixed index imports that choice only."""
    probs = write_jsonl(tmp_path / "p.jsonl", [{"id": "p1", "question": "1 + 0?"}, {"id": "p2", "question": "2 + 0?"}])
    export = write_jsonl(tmp_path / "batch.jsonl", [
        _n_line("p1", [("#### 1", "stop"), ("so #### 1", "stop"), ("let me", "length")]), _n_line("p2", [("#### 2", "stop")])])
    out = tmp_path / "g"
    assert invoke(["generate", "--from-file", export, "--problems", probs, "--out", out, "--id-field", "custom_id",
                   "--output-field", field]) == 0
    assert [(t["problem_id"], t["sample"], t["content"], t["finish_reason"]) for t in read(out / "traces.jsonl")] == expected


@pytest.mark.parametrize("flags,ids", [
    (["--question-field", "problem", "--id-field", "unique_id"], ["test/algebra/1.json", "test/algebra/2.json"]),
    (["--question-field", "problem"], ["p-", "p-"]),  # no id column: ids from the question's hash
])
def test_field_flags_map_a_problems_file_too(server, tmp_path, flags, ids):
    """A MATH-style problems file (``problem``, ``unique_id``) is mapped with the same flags the error line
    names, as curate maps it with problem_fields (the flags were read for --from-file only)."""
    srv = server()
    probs = write_jsonl(tmp_path / "math.jsonl", [
        {"unique_id": f"test/algebra/{i}.json", "problem": f"What is {i} + 2?", "answer": i + 2, "level": i}
        for i in (1, 2)])
    out = tmp_path / "g"
    assert invoke(openai_args(srv, probs, out, *flags)) == 0
    got = sorted(t["problem_id"] for t in read(out / "traces.jsonl"))
    assert [g[:len(w)] for g, w in zip(got, ids)] == ids and len(got) == 2
    assert sorted(c.question for c in srv.log) == ["What is 1 + 2?", "What is 2 + 2?"]


def _responses_line(custom_id, text, status, reason=None):
    """A line of an OpenAI Batch output for /v1/responses (the Responses API): a reasoning item, then the message."""
    return {"custom_id": custom_id, "response": {"status_code": 200, "body": {
        "object": "response", "status": status, "incomplete_details": {"reason": reason} if reason else None,
        "output": [{"type": "reasoning", "summary": []},
                   {"type": "message", "content": [{"type": "output_text", "text": text}]}]}}}


@pytest.mark.parametrize("status,reason,finish", [("completed", None, None), ("incomplete", "max_output_tokens", "length"),
                                                  ("incomplete", "content_filter", "content_filter")])
def test_from_file_responses_api_batch_cut_off_is_truncated(tmp_path, status, reason, finish):
    """The Responses API says a cut-off answer with status incomplete / max_output_tokens, not finish_reason:
    it is read as finish_reason length (so curate's drop_truncated and the seed report see it)."""
    probs = write_jsonl(tmp_path / "p.jsonl", [{"id": "p1", "question": "1 + 0?"}])
    export = write_jsonl(tmp_path / "batch.jsonl", [_responses_line("p1", "so far 1", status, reason)])
    out = tmp_path / "g"
    assert invoke(["generate", "--from-file", export, "--problems", probs, "--out", out, "--id-field", "custom_id",
                   "--output-field", "response.body.output.1.content.0.text"]) == 0
    assert [t["finish_reason"] for t in read(out / "traces.jsonl")] == [finish]
