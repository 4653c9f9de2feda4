"""eval --backend openai and the CQS judge, against an OpenAI-compatible stand-in this test starts on 127.0.0.1."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from conftest import write_jsonl
from mathdistill.errors import UserError
from mathdistill.evaluate import EvalConfig, evaluate
from mathdistill.judge import JudgeConfig, judge_messages, load_rubric, parse_verdict


class Endpoint:
    """Answers ``What is A + B?`` with a short chain; special questions misbehave on purpose. As a judge
    (rubric system message) it grades a chain 90 when its last line is right, 20 otherwise."""

    def __init__(self):
        self.calls: list[dict] = []
        self.no_usage = False
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.calls.append(body)
                status, reply = outer.reply(body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def judge_calls(self):
        return [c for c in self.calls if c["messages"][0]["content"].startswith("You grade")]

    def reply(self, body):
        msgs = body["messages"]
        finish = "stop"
        if msgs[0]["content"].startswith("You grade"):
            user = msgs[1]["content"]
            ref = re.search(r"Reference answer: (.*)", user).group(1).strip()
            chain = user.split("<<<CHAIN\n", 1)[1].rsplit("\nCHAIN>>>", 1)[0]
            if "unreadable" in chain:
                content = "I would rather not say."
            else:
                good = chain.strip().endswith(f"#### {ref}")
                s = 90 if good else 20
                content = "```json\n" + json.dumps({"logic": s, "step_correctness": s, "consistency": s, "no_padding": s,
                                                     "score": s, "reason": "checked"}) + "\n```"
        else:
            q = msgs[-1]["content"]
            m = re.search(r"What is (\d+) \+ (\d+)\?", q)
            if "TOO LONG" in q:
                return 400, {"error": {"message": "This model's maximum context length is 2048 tokens. However, you requested 9000 tokens",
                                       "type": "invalid_request_error", "code": "context_length_exceeded"}}
            if "EMPTY" in q:
                content = ""
            elif "LOOP" in q:
                content, finish = "and again " * 40, "length"
            elif "VAGUE" in q:
                content = "This chain is unreadable for a judge. #### 3"
            elif m:
                a, b = int(m.group(1)), int(m.group(2))
                content = f"{a} + {b} = {a + b}\n#### {a + b}"
            else:
                content = "I do not know."
        out = {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
               "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}]}
        if not self.no_usage:
            out["usage"] = {"prompt_tokens": 20, "completion_tokens": max(1, len(content.split())), "total_tokens": 0}
        return 200, out

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    e = Endpoint()
    yield e
    e.close()


PROBLEMS = [
    {"id": "a", "question": "What is 2 + 3?", "answer": "5", "source": "sum"},
    {"id": "b", "question": "What is 10 + 7?", "answer": "17", "source": "sum"},
    {"id": "c", "question": "EMPTY: What is 1 + 1?", "answer": "2", "source": "odd"},
    {"id": "d", "question": "LOOP: What is 1 + 2?", "answer": "3", "source": "odd"},
    {"id": "e", "question": "TOO LONG: What is 4 + 4?", "answer": "8", "source": "odd"},
    {"id": "f", "question": "VAGUE: What is 1 + 2?", "answer": "3", "source": "odd"},
]


def _preds(folder):
    return {json.loads(x)["problem_id"]: json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()}


def test_openai_backend_scores_an_endpoint(endpoint, tmp_path):
    pf = write_jsonl(tmp_path / "eval.jsonl", PROBLEMS)
    cfg = EvalConfig(backend="openai", base_url=endpoint.url, max_new_tokens=64, model_bytes=270_000_000, report=False)
    s = evaluate(cfg, pf, tmp_path / "ev", model="served-student")
    p = _preds(tmp_path / "ev")
    assert p["a"]["correct"] and p["b"]["correct"] and p["f"]["correct"]
    assert p["a"]["tokens"] == 7  # from the response's usage (the stand-in counts words), not re-counted
    assert p["c"]["output"] == "" and not p["c"]["correct"]
    assert p["d"]["finish_reason"] == "length" and not p["d"]["correct"]
    assert p["e"]["finish_reason"] == "prompt_too_long" and p["e"]["tokens"] == 0
    assert s["misses"] | {"examples": None} == {"prompt_too_long": 1, "empty_output": 1, "no_stop": 1, "error": 0,
                                               "missing_prediction": 0, "no_answer": 0, "examples": None}
    assert s["AS"] == pytest.approx(50.0) and s["n"] == 6 and s["meta"]["backend"] == "openai"
    # greedy, the token limit and the seed go to the endpoint; the model name is the one given
    sent = [c for c in endpoint.calls if "What is 2 + 3?" in c["messages"][-1]["content"]][0]
    assert sent["temperature"] == 0.0 and sent["max_tokens"] == 64 and sent["seed"] == 0 and sent["model"] == "served-student"
    assert s["MLS"] > 0 and s["meta"]["model_bytes_known"]
    written = json.loads((tmp_path / "ev" / "scores.json").read_text())
    for k in ("AS", "CQS", "ES", "MLS", "overall", "mean_tokens", "model_bytes", "n", "cqs_kind", "by_family", "intervals"):
        assert k in written


def test_openai_backend_without_usage_estimates_and_says_so(endpoint, tmp_path):
    endpoint.no_usage = True
    pf = write_jsonl(tmp_path / "eval.jsonl", PROBLEMS[:2])
    s = evaluate(EvalConfig(backend="openai", base_url=endpoint.url, report=False), pf, tmp_path / "ev", model="m")
    assert s["meta"]["tokens_estimated"] == 2
    assert _preds(tmp_path / "ev")["a"]["tokens"] == 4  # "2 + 3 = 5\n#### 5": 16 characters / 4


def test_openai_backend_needs_url_and_model(tmp_path):
    pf = write_jsonl(tmp_path / "eval.jsonl", PROBLEMS[:1])
    with pytest.raises(UserError, match="--base-url"):
        evaluate(EvalConfig(backend="openai"), pf, tmp_path / "a", model="m")
    with pytest.raises(UserError, match="--model NAME"):
        evaluate(EvalConfig(backend="openai", base_url="http://127.0.0.1:9/v1"), pf, tmp_path / "b", model=None)


def test_judge_gives_cqs_with_its_kind_everywhere(endpoint, tmp_path):
    pf = write_jsonl(tmp_path / "eval.jsonl", PROBLEMS)
    preds = write_jsonl(tmp_path / "preds.jsonl", [
        {"problem_id": "a", "output": "2 + 3 = 5\n#### 5", "tokens": 10},
        {"problem_id": "b", "output": "10 + 7 = 18\n#### 18", "tokens": 10},
        {"problem_id": "c", "output": "this one is unreadable #### 2", "tokens": 10},
    ])
    cfg = EvalConfig(cqs="judge", judge=JudgeConfig(base_url=endpoint.url, model="judge-m"), model_bytes=10**8)
    s = evaluate(cfg, pf, tmp_path / "ev", model=None, predictions=preds)
    assert s["cqs_kind"] == "judge" and all(f["cqs_kind"] == "judge" for f in s["by_family"].values())
    # judged: a 90, b 20; c's reply unreadable and d-f have no prediction (empty chains are judged too)
    p = _preds(tmp_path / "ev")
    assert p["a"]["cqs"]["cqs"] == 90 and p["a"]["cqs"]["kind"] == "judge" and p["a"]["cqs"]["rubric"] == "judge_v1"
    assert p["c"]["cqs"]["cqs"] is None and "unreadable judge reply" in p["c"]["cqs"]["error"]
    assert "step_accuracy" in p["a"]["cqs"]["proxy"]  # the proxy stays alongside, labelled
    assert s["cqs_missing"] == 1 and s["meta"]["cqs"]["unscored_chains"] == 1
    judged = [p[k]["cqs"]["cqs"] for k in "abdef"]
    assert s["CQS"] == pytest.approx(sum(judged) / 5)
    assert set(s["cqs_components"]) == {"logic", "step_correctness", "consistency", "no_padding"}
    assert s["meta"]["cqs"]["rubric_sha256"] == load_rubric().sha256
    md = (tmp_path / "ev" / "report.md").read_text()
    assert "CQS (judge)" in md and "CQS (proxy)" not in md
    # the judge saw the rubric, the question, the reference and the chain
    call = [c for c in endpoint.judge_calls() if "10 + 7 = 18" in c["messages"][1]["content"]][0]
    assert "step_correctness" in call["messages"][0]["content"] and "Reference answer: 17" in call["messages"][1]["content"]
    assert call["temperature"] == 0.0


def test_judge_calls_are_cached(endpoint, tmp_path):
    pf = write_jsonl(tmp_path / "eval.jsonl", PROBLEMS[:2])
    preds = write_jsonl(tmp_path / "preds.jsonl", [{"problem_id": "a", "output": "2 + 3 = 5\n#### 5", "tokens": 10},
                                                   {"problem_id": "b", "output": "#### 17", "tokens": 3}])
    cfg = EvalConfig(cqs="judge", judge=JudgeConfig(base_url=endpoint.url, model="judge-m"), model_bytes=10**8, report=False)
    first = evaluate(cfg, pf, tmp_path / "ev", model=None, predictions=preds)
    n = len(endpoint.judge_calls())
    assert n == 2
    if not (tmp_path / "ev" / "judge_cache.sqlite").exists():
        pytest.skip("client.run_requests does not cache calls yet (its SQLite cache lands with the client issue)")
    second = evaluate(cfg, pf, tmp_path / "ev", model=None, predictions=preds)
    assert len(endpoint.judge_calls()) == n and second["CQS"] == first["CQS"]


def test_judge_needs_an_endpoint(tmp_path):
    pf = write_jsonl(tmp_path / "eval.jsonl", PROBLEMS[:1])
    preds = write_jsonl(tmp_path / "preds.jsonl", [{"problem_id": "a", "output": "#### 5", "tokens": 3}])
    with pytest.raises(UserError, match="--judge-base-url"):
        evaluate(EvalConfig(cqs="judge", model_bytes=1), pf, tmp_path / "ev", model=None, predictions=preds)


@pytest.mark.parametrize("reply,expected", [
    # plain JSON
    ('{"logic": 80, "step_correctness": 70, "consistency": 90, "no_padding": 60, "score": 75, "reason": "ok"}', 75.0),
    # fenced, with prose around it
    ('Here is my grade:\n```json\n{"logic": 10, "step_correctness": 10, "consistency": 10, "no_padding": 10, "score": 10}\n```', 10.0),
    # no overall score: the mean of the four criteria
    ('{"logic": 100, "step_correctness": 50, "consistency": 50, "no_padding": 0}', 50.0),
    # a reasoning judge thinks first
    ('<think>{"score": 3}</think>{"score": 64}', 64.0),
    # numbers as strings
    ('{"score": "88"}', 88.0),
])
def test_parse_verdict(reply, expected):
    assert parse_verdict(reply)["cqs"] == expected


@pytest.mark.parametrize("reply,why", [
    ("", "empty"),
    ("The chain is good.", "no JSON"),
    ('{"score": 140}', "out of 0-100"),
    ('{"score": "high"}', "not a number"),
    ('{"logic": 50}', "no 'score'"),
])
def test_parse_verdict_rejects(reply, why):
    with pytest.raises(ValueError, match=why):
        parse_verdict(reply)


def test_rubric_is_versioned_and_braces_in_chains_are_safe(tmp_path):
    r = load_rubric("judge_v1")
    assert r.name == "judge_v1" and len(r.sha256) == 64
    for criterion in ("logic", "step_correctness", "consistency", "no_padding"):
        assert criterion in r.system
    msgs = judge_messages(r, "What is {x}?", "5", "\\boxed{5} and {json}")
    assert "\\boxed{5} and {json}" in msgs[1]["content"] and "What is {x}?" in msgs[1]["content"]
    own = tmp_path / "mine.md"
    own.write_text("=== SYSTEM ===\nGrade.\n=== USER ===\n{question}\n{chain}\n")
    assert load_rubric(str(own)).name == "mine"
    with pytest.raises(UserError, match="shipped rubrics: judge_v1"):
        load_rubric("judge_v9")


def test_eval_through_mathdistill_serve_matches_local_eval(tiny_model, tmp_path):
    """`mathdistill serve` + `eval --backend openai` scores a student exactly as the local transformers backend
    does: same greedy outputs, same token counts, same scores (the served path is a drop-in for the local one)."""
    from mathdistill.models import load, resolve
    from mathdistill.serve import ServeConfig, create_app
    from server_thread import ServerThread

    pf = write_jsonl(tmp_path / "eval.jsonl", [
        {"id": f"q{i}", "question": f"What is {a} + {b}?", "answer": str(a + b), "source": "sum"}
        for i, (a, b) in enumerate([(2, 3), (10, 7), (41, 1), (8, 8)])])
    model, tok = load(resolve(str(tiny_model)))
    torch.manual_seed(0)
    with torch.no_grad():  # the fresh tiny model writes only newlines; louder weights make it write varied text
        for w in model.parameters():
            w.add_(torch.randn_like(w) * 0.5)
    folder = tmp_path / "loud"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    common = dict(max_new_tokens=24, stop_at_answer=False, report=False, model_bytes=1_000_000, threads=1)
    local = evaluate(EvalConfig(**common), pf, tmp_path / "local", model=str(folder))
    app = create_app(model, tok, ServeConfig(threads=1, batch_wait_ms=20), name="tiny")
    with ServerThread(app) as s:
        served = evaluate(EvalConfig(backend="openai", base_url=s.url + "/v1", **common), pf, tmp_path / "served", model="tiny")
    a, b = _preds(tmp_path / "local"), _preds(tmp_path / "served")
    assert set(a) == set(b) == {"q0", "q1", "q2", "q3"}
    for k in a:
        assert b[k]["output"] == a[k]["output"] and b[k]["tokens"] == a[k]["tokens"], k
    assert any(a[k]["output"] for k in a)  # the tiny model does write something to compare
    for k in ("AS", "CQS", "ES", "overall", "mean_tokens"):
        assert served[k] == pytest.approx(local[k]), k
    assert served["meta"]["backend"] == "openai" and local["meta"]["backend"] == "transformers"
