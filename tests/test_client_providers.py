"""What real teacher endpoints send (issue 15, cases 1-5), against the fault-injecting server on 127.0.0.1.

Bodies are the wording of OpenAI, Azure, vLLM, SGLang, DeepSeek, OpenRouter and Anthropic's OpenAI-compatible
API (``tests/fake_openai.py``'s ``CANNED`` and its whole-server modes). Each test's right value is what a user
should get: quota stops at once, reasoning models get ``max_completion_tokens``, a context overflow is one
line naming ``--max-tokens``, a 200 that is not an answer is retried and never stored, timeouts are counted.
"""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from fake_openai import CANNED, FakeOpenAI
from mathdistill.cache import CallCache
from mathdistill.client import ChatClientConfig, ChatRequest, RunStats, classify, run_requests
from mathdistill.errors import UserError


def config(srv, **kw):
    return ChatClientConfig(**{"base_url": srv.base_url, "model": "m", "backoff_s": 0.01, "timeout_s": 5.0,
                               "concurrency": 1, **kw})


def requests(n, samples=1):
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"<q{i}> what is 6*7?"}]
        out.extend(ChatRequest(msgs, key=f"p{i}", sample=s) for s in range(samples))
    return out


def body_bytes(name):
    return json.dumps(CANNED[name][1]).encode()


# ---- the kinds, as the client reads each body ------------------------------------------------------------
@pytest.mark.parametrize("name,kind", [
    ("quota_openai", "quota"), ("quota_openai_old", "quota"), ("quota_deepseek", "quota"),
    ("quota_openrouter", "quota"), ("quota_openrouter_afford", "quota"), ("quota_anthropic", "quota"),
    ("ratelimit_openai", None),  # a real rate limit: retried, not a quota
    ("maxtok_openai", "max_completion_tokens"), ("maxtok_azure", "max_completion_tokens"),
    ("n_reject", "n"), ("n_mlx", "n"), ("n_gateway", "n"),
    ("ctx_prompt_openai", "context"), ("ctx_prompt_vllm", "context"),
    ("bad_temperature", None),
])
def test_error_bodies_are_read_as_their_kind(name, kind):
    status, _ = CANNED[name]
    assert classify(status, body_bytes(name), None).kind == kind


@pytest.mark.parametrize("style", ["vllm", "vllm_new", "sglang", "openai"])
def test_context_numbers_are_read_from_each_wording(style):
    from fake_openai import CONTEXT_STYLES

    f = classify(400, json.dumps({"object": "error", "message": CONTEXT_STYLES[style](4096, 1000, 8000)}).encode(), None)
    assert f.kind == "context" and (f.context.limit, f.context.prompt, f.context.completion) == (4096, 1000, 8000)
    assert f.context.max_tokens_would_help(8000)


def test_llama_cpp_context_error_carries_its_numbers_in_fields():
    body = {"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it",
                      "type": "exceed_context_size_error", "n_prompt_tokens": 1200, "n_ctx": 4096}}
    f = classify(400, json.dumps(body).encode(), None)
    assert f.kind == "context" and (f.context.limit, f.context.prompt_tokens(8000)) == (4096, 1200)
    assert f.context.max_tokens_would_help(8000)


@pytest.mark.parametrize("message,prompt,helps", [
    # only the sum is given: the prompt is the sum less the max_tokens sent (64)
    ("This model's maximum context length is 2048 tokens. However, you requested 9000 tokens", 8936, False),
    ("This model's maximum context length is 2048 tokens. However, you requested 3000 tokens", 2936, False),
    ("This endpoint's maximum context length is 2048 tokens. However, you requested about 2100 tokens", 2036, True),
    ("The prompt (total length 5000) is too long to fit into the model (context length 4096).", 5000, False),
    ("Input is too long: exceeds the model's context window", None, False),  # no numbers: this call fails alone
    ("The prompt is too long: 40000, model maximum context length: 32768", 40000, False),
    # TGI: inputs + max_new_tokens, the limit after "must be <="
    ("Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 1000 `inputs` tokens and "
     "8000 `max_new_tokens`", 1000, True),
])
def test_whether_a_lower_max_tokens_would_help(message, prompt, helps):
    f = classify(400, json.dumps({"error": {"message": message}}).encode(), None)
    assert f.kind == "context" and f.context.prompt_tokens(64) == prompt
    assert f.context.max_tokens_would_help(64) == helps


# ---- case 1: quota exhausted ------------------------------------------------------------------------------
@pytest.mark.parametrize("body", ["quota_openai", "quota_openai_old", "quota_deepseek", "quota_openrouter",
                                  "quota_openrouter_afford", "quota_anthropic"])
def test_quota_exhausted_stops_at_the_first_one(server, tmp_path, body):
    srv = server(faults={"<q3>": [body] * 50})
    with pytest.raises(UserError, match="out of quota or credit") as e:
        run_requests(config(srv), requests(6), tmp_path / "c.sqlite")  # q0-q2 finish first (one at a time)
    assert "\n" not in str(e.value) and "3 finished calls are cached" in str(e.value)
    assert len(srv.calls("<q3>")) == 1, "not retried"
    assert len(srv.log) == 4, "nothing is sent after it"
    with CallCache(tmp_path / "c.sqlite") as c:
        assert c.count() == 3
    # the account topped up: the same run makes only the calls that are missing
    srv2 = server()
    stats = RunStats()
    run_requests(config(srv2), requests(6), tmp_path / "c.sqlite", stats=stats)
    assert stats.cached == 3 and stats.ok == 3 and len(srv2.log) == 3


def test_a_real_rate_limit_is_still_retried(server):
    srv = server(faults={"<q0>": ["ratelimit_openai"] * 2})
    stats = RunStats()
    (r,) = run_requests(config(srv), requests(1), stats=stats)
    assert r.error is None and r.attempts == 3 and stats.retries == 2


def test_quota_through_the_cli_is_one_line_and_exit_2(server, tmp_path):
    import mathdistill

    srv = server(faults={"*": ["quota_openai"] * 50})
    probs = tmp_path / "p.jsonl"
    probs.write_text("".join(json.dumps({"id": f"p{i}", "question": f"<q{i}> 1+{i}?"}) + "\n" for i in range(6)))
    src = str(Path(mathdistill.__file__).resolve().parents[1])
    r = subprocess.run([sys.executable, "-m", "mathdistill", "generate", "--problems", str(probs), "--out",
                        str(tmp_path / "g"), "--backend", "openai", "--base-url", srv.base_url, "--model", "m"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src}, timeout=120, check=False)
    assert r.returncode == 2, r.stderr
    assert "out of quota or credit" in r.stderr and "Traceback" not in r.stderr
    assert len(srv.log) <= 16, "at most the calls already in flight (concurrency 16), no retries"
    assert all(c.outcome == "quota_openai" for c in srv.log)


def test_token_param_flag_sends_max_completion_tokens(server, tmp_path):
    srv = server(token_param="max_completion_tokens")
    probs = tmp_path / "p.jsonl"
    probs.write_text("".join(json.dumps({"id": f"p{i}", "question": f"<q{i}> 1+{i}?"}) + "\n" for i in range(3)))
    from mathdistill import cli

    old = sys.argv
    sys.argv = ["mathdistill", "generate", "--problems", str(probs), "--out", str(tmp_path / "g"), "--backend",
                "openai", "--base-url", srv.base_url, "--model", "m", "--token-param", "max_completion_tokens",
                "--max-tokens", "99"]
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    assert e.value.code in (0, None)
    assert len(srv.log) == 3 and all(c.body.get("max_completion_tokens") == 99 and "max_tokens" not in c.body
                                     for c in srv.log)


# ---- case 2: reasoning models that refuse max_tokens ---------------------------------------------------------
@pytest.mark.parametrize("samples,n_support", [(1, "yes"), (3, "yes"), (3, "reject")])
def test_max_completion_tokens_is_sent_after_the_400(server, samples, n_support):
    srv = server(token_param="max_completion_tokens", n_support=n_support)
    stats = RunStats()
    res = run_requests(config(srv, max_tokens=77), requests(4, samples), stats=stats)
    assert all(r.error is None for r in res), [r.error for r in res]
    assert stats.token_param == "max_completion_tokens" and stats.failed == Counter()
    refused = [c for c in srv.log if "max_tokens" in c.body]
    assert len(refused) == 1 and refused[0].outcome == "400", "refused once, remembered for the rest of the run"
    assert all(c.body["max_completion_tokens"] == 77 for c in srv.log if c not in refused)
    assert stats.n_fallback == (n_support == "reject"), "the max_tokens 400 is not mistaken for 'n not supported'"
    for i in range(4):
        assert srv.paid(f"<q{i}>") == samples


def test_max_completion_tokens_setting_sends_it_from_the_start(server, tmp_path):
    srv = server(token_param="max_completion_tokens")
    run_requests(config(srv, token_param="max_completion_tokens"), requests(3), tmp_path / "c.sqlite")
    assert all("max_tokens" not in c.body and c.outcome == "ok" for c in srv.log)
    stats = RunStats()  # the field's name is not part of the cache key: the same calls, cached
    run_requests(config(srv), requests(3), tmp_path / "c.sqlite", stats=stats)
    assert stats.cached == 3 and stats.calls == 0


@pytest.mark.parametrize("body", ["maxtok_openai", "maxtok_azure"])
def test_one_refusal_of_max_tokens_switches_the_field(server, body):
    srv = server(faults={"<q0>": [body]})
    stats = RunStats()
    res = run_requests(config(srv), requests(3), stats=stats)
    assert all(r.error is None for r in res) and stats.token_param == "max_completion_tokens"
    assert stats.retries == 0 and res[0].attempts == 2


@pytest.mark.parametrize("body,fallback", [("n_reject", True), ("n_mlx", True), ("n_gateway", True),
                                           ("bad_temperature", False), ("400", False)])
def test_samples_fall_back_to_one_call_each_only_when_the_400_is_about_n(server, body, fallback):
    srv = server(faults={"<q0>": [body]})
    stats = RunStats()
    res = run_requests(config(srv), requests(2, samples=3), stats=stats)
    assert stats.n_fallback == fallback
    if fallback:
        assert all(r.error is None for r in res)
    else:  # the request's own fault: those samples fail once, the run goes on with n=
        assert [r.reason for r in res[:3]] == ["http_400"] * 3 and all(r.attempts == 1 for r in res[:3])
        assert all(r.error is None for r in res[3:]) and srv.calls("<q1>")[0].body["n"] == 3


# ---- case 3: context length -------------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["vllm", "vllm_new", "sglang", "openai"])
@pytest.mark.parametrize("samples", [1, 3])
def test_context_overflow_is_one_line_naming_max_tokens(server, style, samples):
    srv = server(context_len=1000, context_style=style)
    reqs = requests(4, samples)
    prompt = FakeOpenAI.prompt_tokens({"messages": reqs[0].messages})
    with pytest.raises(UserError) as e:
        run_requests(config(srv, max_tokens=2000), reqs)
    msg = str(e.value)
    assert "\n" not in msg and "--max-tokens 2000" in msg and "context of 1000 tokens" in msg
    assert f"a prompt of {prompt} tokens" in msg and f"at most {1000 - prompt}" in msg
    assert len(srv.log) == 1, "not retried, no n fallback, no per-sample calls"


def test_max_tokens_that_fit_go_through(server):
    srv = server(context_len=1000)
    res = run_requests(config(srv, max_tokens=900), requests(3, samples=2))
    assert all(r.error is None for r in res)


@pytest.mark.parametrize("body", ["ctx_prompt_openai", "ctx_prompt_vllm"])
def test_a_prompt_longer_than_the_context_fails_alone(server, body):
    srv = server(faults={"<q1>": [body] * 5})
    stats = RunStats()
    res = run_requests(config(srv), requests(3, samples=2), stats=stats)
    assert [r.reason for r in res] == [None, None, "context_length", "context_length", None, None]
    assert len(srv.calls("<q1>")) == 1 and not stats.n_fallback and stats.failed == Counter(context_length=2)


# ---- case 4: a 200 that is not an answer ------------------------------------------------------------------
NOT_ANSWERS = ["abort_sglang", "error_openrouter", "empty_choices", "no_message", "error_200"]


@pytest.mark.parametrize("body", NOT_ANSWERS)
def test_a_200_that_is_not_an_answer_is_retried_and_never_stored(server, tmp_path, body):
    srv = server(faults={"<q1>": [body] * 2})
    stats = RunStats()
    res = run_requests(config(srv), requests(3), tmp_path / "c.sqlite", stats=stats)
    assert all(r.error is None for r in res) and res[1].attempts == 3
    assert res[1].finish_reason == "stop" and res[1].content.startswith("Final answer for <q1>")
    assert stats.not_answers == 2 and stats.retries == 2
    with CallCache(tmp_path / "c.sqlite") as c:
        rows = c.rows()
    assert len(rows) == 3 and {r["finish_reason"] for r in rows} == {"stop"}


def test_an_aborted_choice_of_an_n_call_is_asked_again_alone(server, tmp_path):
    srv = server(faults={"<q0>": ["abort_last"]})
    stats = RunStats()
    res = run_requests(config(srv), requests(2, samples=3), tmp_path / "c.sqlite", stats=stats)
    assert all(r.error is None and r.finish_reason == "stop" and r.content for r in res)
    assert srv.paid("<q0>") == 3, "the two answered choices are kept, only the aborted sample is asked again"
    first, again = srv.calls("<q0>")
    assert first.body["n"] == 3 and "n" not in again.body and again.body.get("max_tokens")
    assert stats.not_answers == 1 and not stats.n_fallback and res[2].attempts == 2
    with CallCache(tmp_path / "c.sqlite") as c:
        assert len(c.rows()) == 6 and {r["finish_reason"] for r in c.rows()} == {"stop"}


@pytest.mark.parametrize("body", NOT_ANSWERS)
def test_a_call_that_never_answers_fails_and_is_not_cached(server, tmp_path, body):
    srv = server(faults={"<q0>": [body] * 10})
    res = run_requests(config(srv, max_retries=1), requests(2), tmp_path / "c.sqlite")
    assert res[0].reason == "no_answer" and res[0].attempts == 2 and res[1].error is None
    with CallCache(tmp_path / "c.sqlite") as c:
        assert c.count() == 1 and [f["reason"] for f in c.rows("failures")] == ["no_answer"]
    srv2 = server()  # a rerun asks again: it was never a finished call
    stats = RunStats()
    run_requests(config(srv2), requests(2), tmp_path / "c.sqlite", stats=stats)
    assert stats.cached == 1 and stats.ok == 1 and stats.earlier_failures == 1


def test_generate_writes_no_trace_for_an_aborted_answer(server, tmp_path):
    from mathdistill.errors import PartialRun
    from mathdistill.generate import GenerateConfig, generate

    srv = server(faults={"<q1>": ["abort_sglang"] * 10})
    probs = tmp_path / "p.jsonl"
    probs.write_text("".join(json.dumps({"id": f"p{i}", "question": f"<q{i}> 1+{i}?"}) + "\n" for i in range(3)))
    cfg = GenerateConfig(backend="openai", base_url=srv.base_url, model="m", backoff_s=0.01, max_retries=1)
    with pytest.raises(PartialRun):
        generate(cfg, probs, tmp_path / "g")
    traces = [json.loads(x) for x in (tmp_path / "g" / "traces.jsonl").read_text().splitlines()]
    assert sorted(t["problem_id"] for t in traces) == ["p0", "p2"]
    assert {t["finish_reason"] for t in traces} == {"stop"}
    (f,) = [json.loads(x) for x in (tmp_path / "g" / "failures.jsonl").read_text().splitlines()]
    assert f["problem_id"] == "p1" and f["reason"] == "no_answer" and "abort" in f["detail"]


# ---- case 5: timeouts on paid endpoints -------------------------------------------------------------------
def test_timeouts_are_counted_apart(server):
    srv = server(faults={"<q0>": ["hang", "hang"], "<q2>": ["500"]})
    stats = RunStats()
    res = run_requests(config(srv, timeout_s=0.3, concurrency=3), requests(3), stats=stats)
    assert all(r.error is None for r in res)
    assert stats.timeouts == 2 and stats.retries == 3
    assert "2 timed out" in stats.line()


@pytest.mark.parametrize("timeout_s,max_tokens,warned", [
    (2.0, 4096, True),  # 100 tokens in ~0.1 s: 4096 take ~4 s, more than 2
    (60.0, 4096, False),
    (2.0, 100, False),
])
def test_a_timeout_short_for_max_tokens_at_the_observed_rate_is_warned(server, timeout_s, max_tokens, warned):
    srv = server(completion_tokens=100, tokens_per_s=1000)
    stats = RunStats()
    run_requests(config(srv, timeout_s=timeout_s, max_tokens=max_tokens, concurrency=2), requests(6), stats=stats)
    rate = stats.tokens_per_s
    assert rate is not None and 300 < rate <= 1000, rate  # the fake generates 1000 tokens/s, plus overhead
    w = stats.timeout_warning(timeout_s, max_tokens)
    assert (w is not None) == warned, w
    if warned:
        assert f"--timeout {timeout_s:g}" in w and f"--max-tokens {max_tokens}" in w and "raise --timeout" in w


def test_generate_summary_counts_timeouts_and_warns(server, tmp_path, capsys):
    from mathdistill.generate import GenerateConfig, generate

    srv = server(completion_tokens=100, tokens_per_s=1000, faults={"<q0>": ["hang"]})
    probs = tmp_path / "p.jsonl"
    probs.write_text("".join(json.dumps({"id": f"p{i}", "question": f"<q{i}> 1+{i}?"}) + "\n" for i in range(6)))
    cfg = GenerateConfig(backend="openai", base_url=srv.base_url, model="m", backoff_s=0.01, timeout_s=0.6,
                         max_tokens=8192)
    s = generate(cfg, probs, tmp_path / "g")
    assert s["traces"] == 6 and s["calls"]["timeouts"] == 1
    (w,) = s["warnings"]
    assert "1 try timed out" in w and "may still be billed" in w and "--timeout 0.6" in w
    assert "warning: 1 try timed out" in capsys.readouterr().err


# ---- the same kinds through `mathdistill generate`, as a user meets them --------------------------------------
@pytest.mark.parametrize("mode,code,says", [
    ({"faults": {"*": ["quota_deepseek"] * 50}}, 2, "out of quota or credit"),
    ({"context_len": 1000, "context_style": "sglang"}, 2, "lower --max-tokens"),
    ({"token_param": "max_completion_tokens", "n_support": "reject"}, 0, "sending max_completion_tokens"),
    ({"faults": {"<q1>": ["error_openrouter"] * 50}}, 3, "2 of 4 samples failed for good (no_answer 2"),
])
def test_generate_cli_on_each_kind(server, tmp_path, capsys, mode, code, says):
    from mathdistill import cli

    srv = server(**mode)
    probs = tmp_path / "p.jsonl"
    probs.write_text("".join(json.dumps({"id": f"p{i}", "question": f"<q{i}> 1+{i}?"}) + "\n" for i in range(2)))
    old = sys.argv
    sys.argv = ["mathdistill", "generate", "--problems", str(probs), "--out", str(tmp_path / "g"), "--backend",
                "openai", "--base-url", srv.base_url, "--model", "m", "--samples", "2", "--max-tokens", "2000",
                "--max-retries", "1", "--set", "backoff_s=0.01"]
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    err = capsys.readouterr().err
    assert (e.value.code or 0) == code, err
    assert says in err and "Traceback" not in err
    if code == 2:
        (line,) = [x for x in err.splitlines() if says in x]
        assert len(line) < 400
