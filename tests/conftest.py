"""Shared fixtures: a tiny random Llama student with a tokenizer trained here, an isolated cache folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

MATH_TEXT = [
    "Please think through the following math problem step by step and generate the answer. The problem is as follows:",
    "State the final answer to the following arithmetic problem: 12 + 35 =",
    "Calculate ( 56 + -33 ) - 84.",
    "98 + 93 = 191\n191 - 77 = 114\n#### 114",
    "The answer is 42. So the total is 7 * 6 = 42 apples.",
    "请你一步一步思考下面的数学问题并生成答案,问题如下: 小明有 3 个苹果,又买了 5 个。答案是 8。",
    "John has 35 apples. He buys 93 more. How many apples does he have?",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) #### . , ? !",
]


def build_tiny_model(folder: Path, vocab_size: int = 400, layers: int = 2, hidden: int = 32, seed: int = 0) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer trained on a few math lines; ChatML template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from mathdistill.prompts import CHATML_TEMPLATE

    folder.mkdir(parents=True, exist_ok=True)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(MATH_TEXT * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def pytest_collection_modifyitems(config, items):
    """Start the slow end-to-end test first: under ``pytest -n 2`` (``make test``) one worker spends its minutes
    on it while the other takes the rest of the suite, instead of it starting last on its own."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def eot_model(tiny_model, tmp_path):
    """The tiny model as a base checkpoint: EOS is <|endoftext|>, while its ChatML turns end with <|im_end|>."""
    import shutil

    d = tmp_path / "eot"
    shutil.copytree(tiny_model, d)
    for name, key in (("tokenizer_config.json", "eos_token"), ("config.json", "eos_token_id"),
                      ("generation_config.json", "eos_token_id")):
        j = json.loads((d / name).read_text())
        j[key] = "<|endoftext|>" if key == "eos_token" else 0
        (d / name).write_text(json.dumps(j))
    return d


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The tests' models are tiny: on one torch thread they run 1.4-2x faster than on two here (two threads
    spin in OpenMP barriers). Only this process: subprocesses (the end-to-end run on the real student) keep
    their defaults, and code under test that sets its own thread count still does."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def server():
    """Start fake OpenAI-compatible servers on 127.0.0.1 (``server(delay_s=..., ...)``); all stopped after the test."""
    from fake_openai import FakeOpenAI

    started = []

    def start(**kw):
        s = FakeOpenAI(**kw).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Keep every test's caches in its temp folder; never read a real API key."""
    monkeypatch.setenv("MATHDISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MATHDISTILL_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def scripted_model(folder: Path, *, key: str = "last", fallback: int | None = None):
    """The tiny Llama writing a fixed script per row, so a test knows every token generation will produce.

    ``model.scripts`` maps a token id to the row's script (a list of token ids; its last one repeats), and
    ``model.default`` is the script of a row whose token is not in it. The row's token is its prompt's last
    token (``key="last"``) or first one (``key="first"``). At each step the script's token gets logit 0,
    ``fallback`` (when given) -1 and every other token -1e9: so greedy decoding writes the script, and where a
    logits processor forbids the script's token the row writes ``fallback``. A row is recognised by its left
    padding (which survives the removal of finished rows from a batch) and its step by the cache's length, so
    the script holds however the batch is generated."""
    import torch
    from transformers import LlamaForCausalLM

    class Scripted(LlamaForCausalLM):
        scripts: dict = {}
        default: list = []

        def forward(self, input_ids=None, attention_mask=None, **kw):
            cache = kw.get("cache", kw.get("past_key_values"))  # renamed in transformers 5
            seen = 0 if cache is None else cache.get_seq_length()
            out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kw)
            # generate leaves the mask out when nothing is padded
            pads = [0] * input_ids.shape[0] if attention_mask is None else (attention_mask == 0).sum(-1).tolist()
            total = seen + input_ids.shape[1]
            if seen == 0:  # prefill
                self.by_pad = {n: self.scripts.get(int(r[n] if key == "first" else r[-1]), self.default)
                               for n, r in zip(pads, input_ids)}
                assert len(self.by_pad) == len(pads), "prompts of one batch need distinct token lengths"
                self.plen = total
            t = total - self.plen  # tokens generated so far
            logits = out.logits
            for r, n in enumerate(pads):
                script = self.by_pad[n]
                logits[r, -1, :] = -1e9
                if fallback is not None:
                    logits[r, -1, fallback] = -1.0
                logits[r, -1, script[min(t, len(script) - 1)]] = 0.0
            return out

    m = Scripted.from_pretrained(str(folder), dtype=torch.float32)
    m.eval()
    return m


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
