"""`mathdistill serve` on a tiny random model: the OpenAI API through the official client (sync, async,
streaming), per-row sampling inside dynamic batches, auth, limits, bad inputs, the 503 path and cancellation.
Every server is started here on a free 127.0.0.1 port and stopped after its test."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from contextlib import contextmanager

import httpx
import openai
import pytest
import torch
from typer.testing import CliRunner

from mathdistill import cli
from mathdistill.models import load, resolve
from mathdistill.serve import ServeConfig, create_app, served_name, vllm_command
from server_thread import ServerThread, wait_until

pytestmark = pytest.mark.timeout(120)

HTTP = httpx.Client(timeout=30)  # one client: a new one per call costs ~0.1 s of TLS setup
Q = "State the final answer to the following arithmetic problem: 12 + 35 ="


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models run fastest on one thread (2 threads on a busy machine spin in OpenMP barriers)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load(resolve(str(tiny_model)))


@contextmanager
def running(tiny, api_key=None, **cfg):
    model, tok = tiny
    cfg.setdefault("threads", 1)  # a 2-layer model: one thread is fastest, and spares a shared machine
    app = create_app(model, tok, ServeConfig(**cfg), name="tiny", api_key=api_key)
    with ServerThread(app) as s:
        s.engine = app.state.engine
        yield s


@pytest.fixture(scope="module")
def server(tiny):
    with running(tiny, batch_wait_ms=50, max_n=4) as s:
        yield s


def client(s, **kw):
    return openai.OpenAI(base_url=s.url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, timeout=60, **kw)


def chat_msgs(q=Q):
    return [{"role": "system", "content": "Please think step by step."}, {"role": "user", "content": q}]


def greedy_reference(tiny, msgs, k):
    """k greedy tokens by recomputing the whole sequence each step (no cache, no padding, no batch)."""
    model, tok = tiny
    ids = tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(k):
            nxt = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(nxt)
    return len(ids), tok.decode(out, skip_special_tokens=True)


def assert_openai_error(r: httpx.Response, status: int):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    return err


# ---------------------------------------------------------------------------------------------- the API


def test_models_and_health(server):
    c = client(server)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    h = HTTP.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == "tiny" and h["queued"] == 0


def test_chat_matches_uncached_greedy_and_counts_usage(server, tiny):
    prompt_len, want = greedy_reference(tiny, chat_msgs(), 9)
    r = client(server).chat.completions.create(model="tiny", messages=chat_msgs(), max_tokens=9, temperature=0,
                                               extra_body={"ignore_eos": True})
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (prompt_len, 9, prompt_len + 9)


def test_end_of_turn_ends_a_completion_when_it_is_not_the_eos(eot_model):
    """A base checkpoint (EOS <|endoftext|>) still stops at its chat template's <|im_end|>."""
    from conftest import scripted_model

    _, tok = load(resolve(str(eot_model)))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id != im_end
    m = scripted_model(eot_model)
    line = tok("1 + 1 = 2", add_special_tokens=False)["input_ids"]
    m.default = line + [im_end] + tok(" 7 + 7 = 14", add_special_tokens=False)["input_ids"] * 5
    with running((m, tok)) as s:
        r = client(s).chat.completions.create(model="tiny", messages=chat_msgs(), max_tokens=40)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("1 + 1 = 2", "stop")
    assert r.usage.completion_tokens == len(line) + 1


def test_max_completion_tokens_is_honoured(server):
    r = client(server).chat.completions.create(model="tiny", messages=chat_msgs(), max_completion_tokens=4, temperature=0,
                                               extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"


def test_concurrent_rows_each_get_their_own_sampling(tiny):
    """Greedy and seeded sampled requests of different prompt lengths, batched together and joining a batch
    mid-flight, each return exactly what they return alone."""
    questions = [Q, "1 + 2 =", "John has 35 apples. He buys 93 more. How many apples does he have?", "7 * 6 ="]
    settings = [dict(temperature=0), dict(temperature=1.3, seed=11), dict(temperature=0.7, top_p=0.8, seed=3),
                dict(temperature=0)]

    def ask(c, q, kw, k=30):
        return c.chat.completions.create(model="tiny", messages=chat_msgs(q), max_tokens=k, extra_body={"ignore_eos": True},
                                         **kw).choices[0].message.content

    with running(tiny, batch_wait_ms=0, max_batch_size=1) as s:  # one at a time: the reference
        alone = [ask(client(s), q, kw) for q, kw in zip(questions, settings)]
    for i, kw in enumerate(settings):
        if kw["temperature"] == 0:
            assert alone[i] == greedy_reference(tiny, chat_msgs(questions[i]), 30)[1]
    with running(tiny, batch_wait_ms=300, max_batch_size=8) as s:
        c = client(s)
        results: dict[int, str] = {}
        long = threading.Thread(target=lambda: results.__setitem__(-1, ask(c, "8 * 8 =", dict(temperature=0), 200)))
        long.start()  # already decoding when the others arrive: they join its batch with their own cache padding
        assert wait_until(lambda: s.engine.stats["steps"] > 20)
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, ask(c, questions[i], settings[i])))
                   for i in range(len(questions))]
        for t in threads:
            t.start()
        for t in threads + [long]:
            t.join(60)
        assert [results[i] for i in range(len(questions))] == alone
        assert results[-1] == greedy_reference(tiny, chat_msgs("8 * 8 ="), 200)[1]
        assert s.engine.stats["max_rows"] >= len(questions) + 1, "the requests did not share a forward pass"


def test_n_choices_are_consecutive_seeds(server):
    c = client(server)
    kw = dict(model="tiny", messages=chat_msgs(), max_tokens=12, temperature=1.0, extra_body={"ignore_eos": True})
    r = c.chat.completions.create(n=3, seed=5, **kw)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    single = [c.chat.completions.create(seed=5 + i, **kw).choices[0].message.content for i in range(3)]
    assert [ch.message.content for ch in r.choices] == single
    assert len(set(single)) > 1, "different seeds gave the same sample"
    assert r.usage.completion_tokens == 36


def test_tiny_top_p_is_greedy(server):
    c = client(server)
    kw = dict(model="tiny", messages=chat_msgs(), max_tokens=12, extra_body={"ignore_eos": True})
    greedy = c.chat.completions.create(temperature=0, **kw).choices[0].message.content
    nucleus = c.chat.completions.create(temperature=1.5, top_p=1e-6, seed=1, **kw).choices[0].message.content
    assert nucleus == greedy


def _sample_text(c, seed):
    return c.chat.completions.create(model="tiny", messages=chat_msgs(), max_tokens=16, temperature=1.0, seed=seed,
                                     extra_body={"ignore_eos": True}).choices[0].message.content


def test_stop_strings_non_streaming_and_streaming(server):
    c = client(server)
    seed, text = next((s, t) for s in range(50) if re.search(r"[A-Za-z0-9]", (t := _sample_text(c, s))[3:]))
    i = 3 + re.search(r"[A-Za-z0-9]", text[3:]).start()
    stop = text[i]
    want = text[: text.find(stop)]
    kw = dict(model="tiny", messages=chat_msgs(), max_tokens=16, temperature=1.0, seed=seed, stop=[stop, "never-seen"],
              extra_body={"ignore_eos": True})
    r = c.chat.completions.create(**kw)
    assert r.choices[0].message.content == want and r.choices[0].finish_reason == "stop"
    chunks = list(c.chat.completions.create(stream=True, **kw))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == want
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streaming_sse_format_and_same_text(server):
    body = {"model": "tiny", "messages": chat_msgs(), "max_tokens": 8, "temperature": 1.0, "seed": 4, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}, "n": 2}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert {ch["object"] for ch in chunks} == {"chat.completion.chunk"} and len({ch["id"] for ch in chunks}) == 1
    firsts = [ch["choices"][0] for ch in chunks[:2]]
    assert [f["delta"] for f in firsts] == [{"role": "assistant", "content": ""}] * 2 and [f["index"] for f in firsts] == [0, 1]
    texts, finish = {0: "", 1: ""}, {}
    for ch in chunks[:-1]:
        for choice in ch["choices"]:
            texts[choice["index"]] += choice["delta"].get("content", "")
            if choice["finish_reason"]:
                finish[choice["index"]] = choice["finish_reason"]
    assert finish == {0: "length", 1: "length"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 16
    whole = client(server).chat.completions.create(model="tiny", messages=chat_msgs(), max_tokens=8, temperature=1.0, seed=4,
                                                   n=2, extra_body={"ignore_eos": True})
    assert [ch.message.content for ch in whole.choices] == [texts[0], texts[1]]


def test_async_client_streaming_and_batching(server):
    async def main():
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        try:
            async def one(i):
                stream = await c.chat.completions.create(model="tiny", messages=chat_msgs(f"{i} + {i} ="), max_tokens=6,
                                                         temperature=0, stream=True, extra_body={"ignore_eos": True})
                text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
                plain = await c.chat.completions.create(model="tiny", messages=chat_msgs(f"{i} + {i} ="), max_tokens=6,
                                                        temperature=0, extra_body={"ignore_eos": True})
                return text, plain.choices[0].message.content
            return await asyncio.gather(*(one(i) for i in range(8)))
        finally:
            await c.close()

    before = server.engine.stats["prefills"]
    pairs = asyncio.run(main())
    assert all(a == b for a, b in pairs)
    assert server.engine.stats["prefills"] - before < 16, "16 requests arriving together were not batched"


def test_completions_endpoint(server, tiny):
    _, tok = tiny
    c = client(server)
    r = c.completions.create(model="tiny", prompt=["12 + 35 =", "7 * 6 ="], max_tokens=5, n=2, temperature=0,
                             extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and [ch.index for ch in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text and r.choices[2].text == r.choices[3].text
    assert r.usage.prompt_tokens == len(tok("12 + 35 =")["input_ids"]) + len(tok("7 * 6 =")["input_ids"])
    assert r.usage.completion_tokens == 20
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(model="tiny", prompt="12 + 35 =", max_tokens=5,
                                                                         temperature=0, stream=True,
                                                                         extra_body={"ignore_eos": True}) if ch.choices)
    assert streamed == r.choices[0].text


def test_unknown_fields_are_ignored(server):
    r = HTTP.post(server.url + "/v1/chat/completions", timeout=30, json={
        "model": "anything", "messages": chat_msgs(), "max_tokens": 3, "logit_bias": {"5": 3}, "user": "u1",
        "frequency_penalty": 0.5, "response_format": {"type": "text"}, "metadata": {"a": "b"}})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


# ------------------------------------------------------------------------------------ bad inputs and limits


def _chat(**over):
    return {"model": "tiny", "messages": chat_msgs(), "max_tokens": 3, **over}


@pytest.mark.parametrize("body,param,needle", [
    (b'{"model": "tiny", "messages": [', None, "not valid JSON"),                     # truncated JSON
    (b"\xff\xfe not utf8", None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),                                                 # not an object
    (b"[" * 100_000 + b"]" * 100_000, None, "not valid JSON"),                         # nested too deeply
    (b'{"messages": [], "max_tokens": 1' + b"0" * 5000 + b"}", None, "not valid JSON"),  # an int Python will not parse
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "temperature", ""),
    ({"model": "tiny"}, "messages", "Field required"),                                # missing messages
    ({"model": "tiny", "messages": []}, "messages", "at least 1"),
    ({"model": "tiny", "messages": "hi"}, "messages", ""),
    (_chat(messages=[{"role": "robot", "content": "hi"}]), "messages.0.role", "'system'"),   # wrong role
    (_chat(messages=[{"content": "hi"}]), "messages.0.role", "Field required"),
    (_chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), "messages.0.content", ""),
    (_chat(n=5), "n", "at most 4"),                                                   # n above the cap
    (_chat(n=0), "n", "greater than or equal to 1"),
    (_chat(max_tokens=-1), "max_tokens", "greater than or equal to 1"),               # negative max_tokens
    (_chat(max_tokens=0), "max_tokens", "greater than or equal to 1"),
    (_chat(max_tokens=5000), "max_tokens", "cap of 2048"),
    (_chat(max_completion_tokens=-3), "max_completion_tokens", ""),
    (_chat(max_tokens="many"), "max_tokens", "integer"),
    (_chat(temperature=7), "temperature", "less than or equal to 2"),
    (_chat(top_p=0), "top_p", "greater than 0"),
    (_chat(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
    (_chat(stop=""), "stop", "non-empty"),
    (_chat(seed="x"), "seed", "integer"),
    (_chat(stream="yes please"), "stream", "boolean"),
])
def test_bad_requests_are_400_with_a_message(server, body, param, needle):
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    err = assert_openai_error(HTTP.post(server.url + "/v1/chat/completions", timeout=30, **kw), 400)
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert needle in err["message"]


@pytest.mark.parametrize("body,param", [({"model": "tiny"}, "prompt"), ({"prompt": "1+1=", "max_tokens": -5}, "max_tokens"),
                                        ({"prompt": [], "max_tokens": 2}, "prompt"),
                                        ({"prompt": "", "max_tokens": 2}, "prompt"), ({"prompt": ["a"] * 3, "n": 2}, "n")])
def test_bad_completions_are_400(server, body, param):
    assert assert_openai_error(HTTP.post(server.url + "/v1/completions", json=body, timeout=30), 400)["param"] == param


def test_the_openai_client_sees_a_bad_request_error(server):
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "x"}])
    assert e.value.status_code == 400 and "role" in e.value.message


def test_prompt_and_context_limits(tiny):
    with running(tiny, max_prompt_tokens=30) as s:
        err = assert_openai_error(HTTP.post(s.url + "/v1/chat/completions", json=_chat(messages=chat_msgs(Q * 3)), timeout=30), 400)
        assert err["code"] == "context_length_exceeded" and "limit of 30" in err["message"]
        ok = HTTP.post(s.url + "/v1/completions", json={"prompt": "1 + 1 =", "max_tokens": 2}, timeout=30)
        assert ok.status_code == 200
        # the tiny model's context is 1024 tokens: 4 prompt tokens + 1021 is refused up front
        err = assert_openai_error(HTTP.post(s.url + "/v1/completions", json={"prompt": "1 + 1 =", "max_tokens": 1021}, timeout=30), 400)
        assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"


def test_body_size_limit_is_413(tiny):
    with running(tiny, max_body_bytes=2000) as s:
        big = _chat(messages=[{"role": "user", "content": "x" * 3000}])
        err = assert_openai_error(HTTP.post(s.url + "/v1/chat/completions", json=big, timeout=30), 413)
        assert err["code"] == "request_too_large"

        def chunks():  # no Content-Length: the limit holds while reading
            data = json.dumps(big).encode()
            for i in range(0, len(data), 500):
                yield data[i:i + 500]
        assert_openai_error(HTTP.post(s.url + "/v1/chat/completions", content=chunks(), timeout=30), 413)
        assert HTTP.post(s.url + "/v1/chat/completions", json=_chat(), timeout=30).status_code == 200


def test_bearer_auth(tiny):
    with running(tiny, api_key="s3cret-key") as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"},
                        {"Authorization": "Basic s3cret-key"}, {"Authorization": "Bearer s3cret-key-and-more"}):
            for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/health")):
                r = HTTP.request(method, s.url + path, headers=headers, json=_chat(), timeout=30)
                assert assert_openai_error(r, 401)["code"] == "invalid_api_key"
                assert r.headers["www-authenticate"] == "Bearer"
        with pytest.raises(openai.AuthenticationError):
            client(s, api_key="nope").models.list()
        c = client(s, api_key="s3cret-key")
        assert c.models.list().data[0].id == "tiny"
        assert c.chat.completions.create(model="tiny", messages=chat_msgs(), max_tokens=2).usage.completion_tokens <= 2
        assert s.engine.stats["requests"] == 1, "a request without the key reached the model"


def test_full_queue_answers_503_with_retry_after(tiny):
    long = _chat(max_tokens=1000, ignore_eos=True, messages=[{"role": "user", "content": "1"}])
    with running(tiny, max_batch_size=1, max_queue=1, retry_after_s=3, batch_wait_ms=0) as s, \
            httpx.Client(base_url=s.url, timeout=60) as h:
        with h.stream("POST", "/v1/chat/completions", json={**long, "stream": True}) as running_one:
            assert running_one.status_code == 200
            assert wait_until(lambda: s.engine.load()["running"] == 1)
            with h.stream("POST", "/v1/chat/completions", json={**long, "stream": True}) as waiting:
                assert wait_until(lambda: s.engine.load()["queued"] == 1)
                r = HTTP.post(s.url + "/v1/chat/completions", json=_chat(), timeout=30)
                assert assert_openai_error(r, 503)["code"] == "queue_full"
                assert r.headers["retry-after"] == "3"
                with pytest.raises(openai.APIStatusError) as e:
                    client(s).chat.completions.create(model="tiny", messages=chat_msgs(), max_tokens=2)
                assert e.value.status_code == 503
                assert waiting.status_code == 200
            # the waiting client hung up: its request leaves the queue without ever running
            assert wait_until(lambda: s.engine.stats["cancelled"] == 1 and s.engine.load()["queued"] == 0)
            assert s.engine.load()["running"] == 1
        # the running one hung up too: its generation stops
        assert wait_until(lambda: s.engine.load() == {"queued": 0, "running": 0}, 10)
        assert s.engine.stats["cancelled"] == 2 and s.engine.stats["prefills"] == 1
        assert s.engine.stats["tokens"] < 1000 and s.engine.stats["finished"] == 0
        assert HTTP.post(s.url + "/v1/chat/completions", json=_chat(), timeout=30).status_code == 200


def test_disconnect_cancels_non_streaming(tiny):
    with running(tiny, batch_wait_ms=0) as s:
        with pytest.raises(httpx.ReadTimeout):
            HTTP.post(s.url + "/v1/chat/completions", json=_chat(max_tokens=1000, ignore_eos=True,
                                                                  messages=[{"role": "user", "content": "1"}]), timeout=0.5)
        assert wait_until(lambda: s.engine.stats["cancelled"] == 1, 10), s.engine.stats
        assert wait_until(lambda: s.engine.load()["running"] == 0, 5)
        assert 0 < s.engine.stats["tokens"] < 1000 and s.engine.stats["finished"] == 0


def test_disconnect_cancels_streaming(tiny):
    with running(tiny, batch_wait_ms=0) as s:
        with httpx.stream("POST", s.url + "/v1/chat/completions", timeout=30,
                          json=_chat(max_tokens=1000, ignore_eos=True, stream=True,
                                     messages=[{"role": "user", "content": "1"}])) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
        assert wait_until(lambda: s.engine.stats["cancelled"] == 1, 10), s.engine.stats
        assert wait_until(lambda: s.engine.load()["running"] == 0, 5)
        assert s.engine.stats["tokens"] < 1000 and s.engine.stats["finished"] == 0


def test_a_failing_batch_is_a_500_and_the_server_keeps_serving(tiny, monkeypatch):
    with running(tiny) as s:
        real = s.engine._forward
        calls = {"n": 0}

        def flaky(*a, **kw):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("simulated out of memory")
            return real(*a, **kw)
        monkeypatch.setattr(s.engine, "_forward", flaky)
        err = assert_openai_error(HTTP.post(s.url + "/v1/chat/completions", json=_chat()), 500)
        assert err["type"] == "server_error" and "simulated out of memory" in err["message"]
        assert HTTP.post(s.url + "/v1/chat/completions", json=_chat()).status_code == 200
        assert s.engine.stats["failed"] == 1 and s.engine.load() == {"queued": 0, "running": 0}


# ------------------------------------------------------------------------------------ CLI and vLLM hand-off


def test_help_defaults_come_from_serve_config():
    out = re.sub(r"\s+", " ", CliRunner().invoke(cli.app, ["serve", "--help"], terminal_width=400).output)
    for flag, field in (("--host", "host"), ("--port", "port"), ("--max-batch-size", "max_batch_size"),
                        ("--max-queue", "max_queue"), ("--max-tokens-cap", "max_tokens_cap")):
        assert flag in out and f"[config: {field}; default: {ServeConfig.model_fields[field].default}]" in out
    assert ServeConfig().host == "127.0.0.1"


def _invoke(args, capsys):
    from test_cli import invoke

    code = invoke(args)
    return code, capsys.readouterr().err


def test_vllm_engine_without_vllm_is_one_line(tiny_model, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    code, err = _invoke(["serve", "--model", str(tiny_model), "--engine", "vllm"], capsys)
    assert code == 2 and "needs vLLM" in err and "pip install" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = _invoke(["serve", "--model", str(tiny_model), "--engine", "vllm"], capsys)
    assert code == 2 and "needs a CUDA GPU" in err and len(err.strip().splitlines()) == 1


def test_vllm_command_serves_the_merged_student(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    spec = resolve(str(tiny_model), str(tmp_path / "adapter"))
    argv, env = vllm_command(ServeConfig(engine="vllm", max_batch_size=12), spec, api_key="k-123")
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    opts = dict(zip(argv[3::2], argv[4::2]))
    assert opts["--host"] == "127.0.0.1" and opts["--port"] == "8000" and opts["--max-num-seqs"] == "12"
    assert opts["--served-model-name"] == served_name(spec) == "model"
    assert "k-123" not in " ".join(argv) and env["VLLM_API_KEY"] == "k-123"
    merged = AutoModelForCausalLM.from_pretrained(opts["--model"])
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(merged(x).logits, peft_model(x).logits, atol=1e-5)
        assert not torch.allclose(merged(x).logits, AutoModelForCausalLM.from_pretrained(str(tiny_model))(x).logits, atol=1e-3)
    assert vllm_command(ServeConfig(), spec)[0][4] == opts["--model"], "the merge is cached"
    assert "VLLM_API_KEY" not in vllm_command(ServeConfig(), spec)[1]
