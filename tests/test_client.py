"""The endpoint client against a real local server that injects faults (tests/fake_openai.py)."""

import time
from collections import Counter

import pytest

from mathdistill.cache import CallCache
from mathdistill.client import (ChatClientConfig, ChatRequest, RunStats, parse_message, public_endpoint,
                                retry_after_s, run_requests)
from mathdistill.config import build
from mathdistill.errors import UserError




def config(srv, **kw):
    return ChatClientConfig(**{"base_url": srv.base_url, "model": "m", "backoff_s": 0.01, "timeout_s": 2.0, **kw})


def requests(n, samples=1):
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"<q{i}> what is 6*7?"}]
        out.extend(ChatRequest(msgs, key=f"p{i}", sample=s) for s in range(samples))
    return out


def assert_one_result_each_and_no_repeat(srv, reqs, results, samples):
    assert [(r.request.key, r.request.sample) for r in results] == [(q.key, q.sample) for q in reqs]
    for q in {r.messages[0]["content"].split()[0] for r in reqs}:
        assert srv.paid(q) == samples, f"{q}: {srv.paid(q)} paid completions for {samples} samples"


# Every fault the issue names, then success on the next try: one result per request, nothing paid twice.
@pytest.mark.parametrize("fault", ["429", "429:0", "500", "503", "408", "409", "hang", "garbled", "nochoices", "drop"])
def test_retryable_fault_is_retried_to_success(server, fault):
    srv = server(faults={"<q1>": [fault, fault]})
    reqs = requests(4)
    stats = RunStats()
    res = run_requests(config(srv, timeout_s=0.5), reqs, stats=stats)
    assert all(r.error is None for r in res), [r.error for r in res]
    assert res[1].attempts == 3 and stats.retries == 2 and stats.calls == 6
    assert_one_result_each_and_no_repeat(srv, reqs, res, 1)


def test_retry_after_is_honoured(server):
    srv = server(faults={"<q0>": ["429:1"]})
    res = run_requests(config(srv), requests(1))
    assert res[0].error is None
    first, second = srv.calls("<q0>")
    assert first.outcome == "429:1" and second.t - first.t >= 1.0, "retried before Retry-After ran out"


def test_retry_after_pauses_every_call(server):
    srv = server(faults={"<q0>": ["429:1"]}, delay_s=0.05)
    reqs = requests(1) + requests(6)[1:]
    res = run_requests(config(srv, concurrency=1), reqs)  # q0 first; the rest wait behind its pause
    assert all(r.error is None for r in res)
    t429 = srv.calls("<q0>")[0].t
    later = [c.t for c in srv.log if c.t > t429]
    assert later and min(later) - t429 >= 1.0


def test_backoff_grows_with_jitter(server):
    srv = server(faults={"<q0>": ["500"] * 3})
    run_requests(config(srv, backoff_s=0.1), requests(1))
    t = [c.t for c in srv.calls("<q0>")]
    gaps = [b - a for a, b in zip(t, t[1:])]
    # equal jitter: try k waits between half and all of backoff_s * 2**(k-1)
    for k, gap in enumerate(gaps, 1):
        assert 0.1 * 2 ** (k - 1) / 2 - 0.01 <= gap <= 0.1 * 2 ** (k - 1) + 0.3, gaps


@pytest.mark.parametrize("status", ["400", "404", "422"])
def test_other_4xx_are_not_retried(server, status):
    srv = server(faults={"<q2>": [status, status]})
    stats = RunStats()
    res = run_requests(config(srv, concurrency=1), requests(3), stats=stats)  # q0, q1 succeed first
    assert res[2].error and res[2].reason == f"http_{status}" and res[2].attempts == 1
    assert len(srv.calls("<q2>")) == 1
    assert stats.failed == Counter({f"http_{status}": 1}) and stats.ok == 2


def test_gives_up_after_max_retries_and_records_the_reason(server, tmp_path):
    srv = server(faults={"<q1>": ["503"] * 10})
    stats = RunStats()
    res = run_requests(config(srv, max_retries=2), requests(3), tmp_path / "c.sqlite", stats=stats)
    assert [r.error is None for r in res] == [True, False, True]
    assert res[1].reason == "http_503" and res[1].attempts == 3 and "injected 503" in res[1].error
    assert len(srv.calls("<q1>")) == 3
    with CallCache(tmp_path / "c.sqlite") as c:
        assert c.count() == 2
        (f,) = c.rows("failures")
        assert f["reason"] == "http_503" and f["attempts"] == 3 and f["sample"] == 0


def test_timeout_gives_up_as_timeout(server):
    srv = server(faults={"<q0>": ["hang"] * 3})
    t0 = time.monotonic()
    res = run_requests(config(srv, timeout_s=0.3, max_retries=1), requests(2))
    assert res[0].reason == "timeout" and res[0].attempts == 2 and res[1].error is None
    assert time.monotonic() - t0 < 3


def test_rerun_retries_only_failures_and_never_repeats_a_finished_call(server, tmp_path):
    srv = server(faults={"<q2>": ["500"] * 2})
    cache = tmp_path / "c.sqlite"
    reqs = requests(5, samples=2)
    first = run_requests(config(srv, max_retries=1), reqs, cache)
    assert sum(r.error is not None for r in first) == 2
    n = len(srv.log)
    stats = RunStats()
    second = run_requests(config(srv, max_retries=1), reqs, cache, stats=stats)
    assert all(r.error is None for r in second)
    assert [c.question.split()[0] for c in srv.log[n:]] == ["<q2>"], "only the failed prompt is sent again"
    assert stats.cached == 8 and stats.ok == 2 and stats.earlier_failures == 2
    assert_one_result_each_and_no_repeat(srv, reqs, second, 2)
    third = RunStats()
    run_requests(config(srv), reqs, cache, stats=third)
    assert third.calls == 0 and third.cached == 10


def test_sampling_params_are_part_of_the_key(server, tmp_path):
    srv = server()
    run_requests(config(srv), requests(2), tmp_path / "c.sqlite")
    run_requests(config(srv, temperature=0.1), requests(2), tmp_path / "c.sqlite")
    assert len(srv.log) == 4


def test_identical_requests_are_sent_once(server):
    srv = server()
    msgs = [{"role": "user", "content": "<q0> same question"}]
    res = run_requests(config(srv), [ChatRequest(msgs, key="a"), ChatRequest(list(msgs), key="b")])
    assert len(srv.log) == 1
    assert [r.request.key for r in res] == ["a", "b"] and res[0].content == res[1].content


def test_params_and_extra_body_are_passed_through(server):
    srv = server(n_support="ignore")
    cfg = config(srv, temperature=0.3, top_p=0.5, max_tokens=77, seed=10, extra_body='{"top_k": 20, "chat_template_kwargs": {"enable_thinking": true}}',
                 n_mode="separate")
    run_requests(cfg, requests(1, samples=2))
    bodies = sorted((c.body for c in srv.log), key=lambda b: b["seed"])
    for k, b in enumerate(bodies):
        assert b["temperature"] == 0.3 and b["top_p"] == 0.5 and b["max_tokens"] == 77
        assert b["seed"] == 10 + k, "sample k gets seed + k"
        assert b["top_k"] == 20 and b["chat_template_kwargs"] == {"enable_thinking": True}
        assert "n" not in b


@pytest.mark.parametrize("bad,msg", [('{"top_k": ', "not valid JSON"), ("[1]", "JSON object"),
                                     ('{"n": 4}', "set by mathdistill")])
def test_bad_extra_body_is_one_clear_error(bad, msg):
    with pytest.raises(UserError, match=msg) as e:
        build(ChatClientConfig, {"extra_body": bad}, "flags")
    assert "\n" not in str(e.value)


def test_samples_use_n_when_supported(server):
    srv = server()
    reqs = requests(3, samples=4)
    res = run_requests(config(srv), reqs)
    assert len(srv.log) == 3 and {c.body["n"] for c in srv.log} == {4}
    assert len({r.content for r in res}) == 12, "four different choices per prompt"
    assert_one_result_each_and_no_repeat(srv, reqs, res, 4)


@pytest.mark.parametrize("usage", [True, False])
def test_usage_of_an_n_call_is_split_between_its_samples(server, usage):
    srv = server(usage=usage)
    stats = RunStats()
    res = run_requests(config(srv), requests(1, samples=3), stats=stats)
    assert all(r.error is None for r in res)
    tokens = [r.completion_tokens for r in res]
    if usage:
        assert sum(tokens) == stats.completion_tokens > 0 and all(t > 0 for t in tokens)
        assert {r.prompt_tokens for r in res} == {stats.prompt_tokens}
    else:
        assert tokens == [None] * 3 and stats.completion_tokens == 0


@pytest.mark.parametrize("support", ["ignore", "reject"])
def test_samples_fall_back_to_separate_calls(server, support):
    srv = server(n_support=support)
    reqs = requests(4, samples=3)
    stats = RunStats()
    res = run_requests(config(srv, concurrency=1, seed=0), reqs, stats=stats)
    assert all(r.error is None for r in res) and stats.n_fallback
    assert [b for b in (c.body.get("n") for c in srv.log) if b] == [3], "n= is tried once, then never again"
    assert_one_result_each_and_no_repeat(srv, reqs, res, 3)
    assert stats.failed == Counter()


def test_rpm_limit(server):
    srv = server()
    t0 = time.monotonic()
    run_requests(config(srv), requests(20, samples=1))
    free = time.monotonic() - t0
    n = len(srv.log)
    t0 = time.monotonic()
    run_requests(config(srv, rpm=600), [ChatRequest([{"role": "user", "content": f"<r{i}>"}]) for i in range(20)])
    limited = time.monotonic() - t0  # 10 per second with a burst of 10: the last starts after >= 1 s
    assert limited >= 0.95 and limited > free + 0.5, (free, limited)
    t = [c.t for c in srv.log[n:]]
    assert max(sum(1 for x in t if a <= x < a + 0.5) for a in t) <= 10 + 5 + 1  # burst + 0.5 s of refill


@pytest.mark.parametrize("concurrency", [1, 8, 48])
def test_connections_are_kept_alive_one_per_call_in_flight(server, concurrency):
    """Each call in flight keeps its own keep-alive connection: a run never opens more connections than
    --concurrency (httpcore's shared pool reconnected under load, which cost 3-8x the throughput)."""
    srv = server(delay_s=0.2)
    res = run_requests(config(srv, concurrency=concurrency, timeout_s=60), requests(concurrency * 4))
    assert all(r.error is None for r in res), [r.error for r in res if r.error][:3]
    assert len(srv.log) == concurrency * 4
    assert srv.connections <= concurrency, f"{srv.connections} connections for {concurrency} calls in flight"


def test_tpm_limit(server):
    srv = server()
    stats = RunStats()
    t0 = time.monotonic()
    run_requests(config(srv, tpm=6000, max_tokens=20), requests(20), stats=stats)  # 100 tokens/s, burst 100
    used = stats.prompt_tokens + stats.completion_tokens
    assert used > 200
    assert time.monotonic() - t0 >= (used - 100) / 100 - 0.1


# reasoning: DeepSeek/vLLM `reasoning_content`, newer vLLM/OpenRouter `reasoning`, inline <think>.
@pytest.mark.parametrize("msg,reasoning,content", [
    ({"content": "x = 4", "reasoning_content": "2+2"}, "2+2", "x = 4"),
    ({"content": "x = 4", "reasoning": "2+2"}, "2+2", "x = 4"),
    ({"content": "<think>2+2</think>\n\nx = 4"}, "2+2", "x = 4"),
    ({"content": "<think>a</think>x = 4", "reasoning_content": "b"}, "b\na", "x = 4"),
    ({"content": "2+2 is 4</think>x = 4"}, "2+2 is 4", "x = 4"),  # the template put <think> in the prompt
    ({"content": "<think>still thinking"}, "still thinking", ""),  # cut off by max_tokens
    ({"content": None, "reasoning_content": "only thoughts"}, "only thoughts", ""),
    ({"content": [{"type": "text", "text": "x = "}, {"type": "text", "text": "4"}]}, None, "x = 4"),
])
def test_parse_message(msg, reasoning, content):
    assert parse_message(msg) == (reasoning, content)


@pytest.mark.parametrize("mode", ["field", "inline"])
def test_reasoning_from_the_server_lands_apart(server, mode):
    srv = server(reasoning=mode)
    (r,) = run_requests(config(srv), requests(1))
    assert r.reasoning == "Let me think about: <q0> what is 6*7?"
    assert r.content.startswith("Final answer for <q0>") and "<think>" not in r.content


def test_cache_rows_keep_full_request_and_response_but_no_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-never-on-disk-123")
    srv = server(faults={"<q0>": ["500"]})
    run_requests(config(srv, base_url=srv.base_url + "?api-key=sk-test-never-on-disk-123"), requests(2),
                 tmp_path / "c.sqlite")
    assert srv.log[0].authorization == "Bearer sk-test-never-on-disk-123"
    assert srv.log[0].path == "/v1/chat/completions?api-key=sk-test-never-on-disk-123"
    with CallCache(tmp_path / "c.sqlite") as c:
        rows = c.rows()
    import json

    assert json.loads(rows[0]["request_json"])["messages"][0]["content"].startswith("<q")
    assert json.loads(rows[0]["response_json"])["choices"][0]["message"]["content"].startswith("Final answer")
    assert rows[0]["endpoint"] == srv.base_url
    assert all("sk-test-never-on-disk-123" not in json.dumps(r) for r in rows)
    for f in tmp_path.iterdir():
        assert b"sk-test-never-on-disk-123" not in f.read_bytes(), f


@pytest.fixture
def no_proxy_env(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    return monkeypatch


def test_http_proxy_from_the_environment_is_used(server, no_proxy_env):
    srv = server()  # answers absolute-form requests too, like a forward proxy in front of the endpoint
    no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{srv.port}")
    cfg = ChatClientConfig(base_url="http://teacher.invalid:9/v1", model="m", max_retries=0)
    (r,) = run_requests(cfg, requests(1))
    assert r.error is None and srv.log[0].path == "http://teacher.invalid:9/v1/chat/completions"


def test_no_proxy_exempts_the_endpoint(server, no_proxy_env):
    srv = server()
    no_proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    no_proxy_env.setenv("NO_PROXY", "127.0.0.1,localhost")
    (r,) = run_requests(config(srv, max_retries=0), requests(1))
    assert r.error is None and srv.log[0].path == "/v1/chat/completions"


def test_a_socks_proxy_is_one_clear_error(server, no_proxy_env):
    srv = server()
    no_proxy_env.setenv("ALL_PROXY", "socks5://user:pw@127.0.0.1:1080")
    with pytest.raises(UserError, match="only http\\(s\\) proxies") as e:
        run_requests(config(srv), requests(1))
    assert "pw" not in str(e.value)


def test_a_compressed_answer_is_decoded(server):
    srv = server(faults={"<q0>": ["gzip"]})
    (r,) = run_requests(config(srv), requests(1))
    assert r.error is None and r.content.startswith("Final answer for <q0>") and r.attempts == 1


def test_unreachable_endpoint_is_one_clear_error():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cfg = ChatClientConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1, backoff_s=0.01)
    with pytest.raises(UserError, match="cannot reach"):
        run_requests(cfg, requests(3))


def test_refused_key_stops_the_run_with_a_hint(server):
    srv = server(faults={"*": ["401"] * 100})
    with pytest.raises(UserError, match="MATHDISTILL_API_KEY"):
        run_requests(config(srv), requests(5))


@pytest.mark.parametrize("url", ["127.0.0.1:8000/v1", "ftp://host/v1"])
def test_bad_base_url(url):
    with pytest.raises(UserError, match="not an http"):
        run_requests(ChatClientConfig(base_url=url, model="m"), requests(1))


def test_retry_after_forms():
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert 0 <= retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) <= 0.0  # in the past: now
    assert retry_after_s({"retry-after": "soon"}) is None and retry_after_s({}) is None


def test_public_endpoint_drops_credentials():
    assert public_endpoint("https://u:p@api.x.com:8443/v1?key=s") == "https://api.x.com:8443/v1"
