"""Training on the tiny model: packing masks, gradient accumulation, checkpoint/resume, held-out loss, full
fine-tuning, target modules, the early memory check."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mathdistill.errors import UserError
from mathdistill.models import load, resolve
from mathdistill.prompts import EN_PROMPT
import mathdistill.train_trainer as trainer_mod
from mathdistill.train import TrainConfig, train
from mathdistill.train_data import Collator, pack_rows, tokenize_example
from mathdistill.train_losses import answer_only_loss

# rows of different lengths, so padding and packing differ
ROWS = [{"instruction": EN_PROMPT, "input": f"State the final answer: {a} + {b} =",
         "output": f"{a} + {b} = {a + b}\n" + "So we add them. " * (a % 4) + f"#### {a + b}"}
        for a in range(3, 9) for b in range(2, 5)]


@pytest.fixture
def dataset(tmp_path):
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps(ROWS))
    return ds


def feats_of(tok, rows):
    return [dict(zip(("input_ids", "labels"), tokenize_example(tok, EN_PROMPT, r["input"], r["output"]))) for r in rows]


def test_pack_rows_few_balanced_bins():
    bins = pack_rows([5, 3, 8, 2, 4], capacity=10)
    assert sorted(i for b in bins for i in b) == [0, 1, 2, 3, 4]
    assert all(sum([5, 3, 8, 2, 4][i] for i in b) <= 10 for b in bins)
    assert len(bins) == 3  # 22 tokens need at least 3 bins of 10
    # the bins are balanced, so padding them to the longest wastes little
    lengths = [300, 100, 100, 100, 100, 100]
    assert sorted(sum(lengths[i] for i in b) for b in pack_rows(lengths, 512)) == [400, 400]


def test_packed_batch_gives_the_same_loss_as_padded_batches(tiny_model):
    """No loss on prompts, no attention across packed rows: packed and padded batches give one loss."""
    model, tok = load(resolve(str(tiny_model)))
    feats = feats_of(tok, ROWS[:8])
    padded = Collator(tok.pad_token_id)(feats)
    packed = Collator(tok.pad_token_id, pack_length=200)(feats)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    assert "attention_mask" not in packed
    assert int(packed["n_real"]) == int(padded["attention_mask"].sum())
    # every row restarts its positions at 0
    assert int((packed["position_ids"] == 0).sum()) >= len(feats)
    # the same answer tokens carry the loss
    assert int((packed["labels"] != -100).sum()) == int((padded["labels"] != -100).sum())
    with torch.no_grad():
        lp = answer_only_loss(model, packed)
        lu = answer_only_loss(model, padded)
        one_by_one = [answer_only_loss(model, Collator(tok.pad_token_id)([f])) for f in feats]
    n = [sum(x != -100 for x in f["labels"][1:]) for f in feats]
    per_row = sum(l.item() * k for l, k in zip(one_by_one, n)) / sum(n)
    assert lp.item() == pytest.approx(lu.item(), rel=1e-5)
    assert lp.item() == pytest.approx(per_row, rel=1e-5)


def test_packed_rows_do_not_attend_to_each_other(tiny_model):
    """Changing the first packed row must not change the second row's loss."""
    model, tok = load(resolve(str(tiny_model)))
    a, b, c = feats_of(tok, [ROWS[0], ROWS[5], ROWS[9]])
    col = Collator(tok.pad_token_id, pack_length=400)
    with torch.no_grad():
        only_b = answer_only_loss(model, Collator(tok.pad_token_id)([b]))
        ab = col([a, b])
        cb = col([c, b])
        # mask out the first row's labels so that only b's loss is measured
        for batch, first in ((ab, a), (cb, c)):
            batch["labels"][0, : len(first["input_ids"])] = -100
        assert answer_only_loss(model, ab).item() == pytest.approx(only_b.item(), rel=1e-5)
        assert answer_only_loss(model, cb).item() == pytest.approx(only_b.item(), rel=1e-5)


def adapter_weights(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def small_cfg(tiny_model, **kw):
    base = dict(base_model=str(tiny_model), learning_rate=5e-3, epochs=2, batch_size=4, lora_r=4, lora_alpha=8,
                lora_dropout=0.0, save_steps=0, heldout_fraction=0.0, group_by_length=False)
    return TrainConfig(**{**base, **kw})


def test_grad_accum_and_checkpointing_give_the_same_weights(tiny_model, dataset, tmp_path):
    """4 rows x 2 accumulated micro-batches == 8 rows at once (loss normalised over the whole step)."""
    train(small_cfg(tiny_model, batch_size=8, max_steps=2, packing=True), dataset, tmp_path / "a")
    train(small_cfg(tiny_model, batch_size=4, grad_accum=2, max_steps=2, gradient_checkpointing=True,
                    packing=False), dataset, tmp_path / "b")
    wa, wb = adapter_weights(tmp_path / "a" / "adapter"), adapter_weights(tmp_path / "b" / "adapter")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_resume_after_a_crash_gives_the_same_weights(tiny_model, dataset, tmp_path, monkeypatch):
    """Crash after step 5 (checkpoint at 4, a half-written staging folder left behind), resume: same final
    weights as an uninterrupted run, across an epoch boundary, with LoRA dropout and length grouping on."""
    cfg = small_cfg(tiny_model, epochs=2, lora_dropout=0.1, group_by_length=True, save_steps=2, heldout_fraction=0.1)
    full = train(cfg, dataset, tmp_path / "full")
    assert full["steps"] == 8

    class Crash(trainer_mod.DistillTrainer):
        def training_step(self, *a, **kw):
            if self.state.global_step == 5:
                # as if killed while writing the next checkpoint: a half-written one in the staging folder
                Path(self.args.output_dir, "checkpoint-6").mkdir(parents=True, exist_ok=True)
                raise KeyboardInterrupt("simulated crash")
            return super().training_step(*a, **kw)

    monkeypatch.setattr(trainer_mod, "DistillTrainer", Crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, dataset, tmp_path / "crash")
    monkeypatch.undo()
    ck = sorted(p.name for p in (tmp_path / "crash" / "checkpoints").iterdir() if not p.name.startswith("."))
    assert ck == ["checkpoint-2", "checkpoint-4"]
    assert not (tmp_path / "crash" / "adapter").exists()
    resumed = train(cfg, dataset, tmp_path / "crash", resume=True)
    assert resumed["resumed_from"] == "checkpoint-4" and resumed["steps"] == 8
    wa, wb = adapter_weights(tmp_path / "full" / "adapter"), adapter_weights(tmp_path / "crash" / "adapter")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-7)
    # the log of the resumed run covers every step once, like the uninterrupted one
    steps = [json.loads(x)["step"] for x in (tmp_path / "crash" / "train_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == list(range(1, 9))


def test_resume_refuses_other_settings_or_no_checkpoint(tiny_model, dataset, tmp_path):
    with pytest.raises(UserError, match="no checkpoint"):
        train(small_cfg(tiny_model), dataset, tmp_path / "none", resume=True)
    train(small_cfg(tiny_model, max_steps=2, save_steps=2), dataset, tmp_path / "r")
    with pytest.raises(UserError, match="learning_rate"):
        train(small_cfg(tiny_model, max_steps=2, save_steps=2, learning_rate=1e-4), dataset, tmp_path / "r", resume=True)


def test_heldout_loss_each_epoch_and_loss_png(tiny_model, dataset, tmp_path):
    s = train(small_cfg(tiny_model, epochs=3, heldout_fraction=0.2), dataset, tmp_path / "t")
    log = [json.loads(x) for x in (tmp_path / "t" / "train_log.jsonl").read_text().splitlines()]
    ev = [r for r in log if "eval_loss" in r]
    assert [r["epoch"] for r in ev] == [1.0, 2.0, 3.0]
    assert s["heldout_rows"] == 4 and s["rows"] == 14
    assert s["final_heldout_loss"] == ev[-1]["eval_loss"]
    png = (tmp_path / "t" / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_full_finetuning_writes_a_plain_model_folder(tiny_model, dataset, tmp_path):
    s = train(small_cfg(tiny_model, finetune="full", learning_rate=1e-3, max_steps=2), dataset, tmp_path / "t")
    assert s["trainable_params"] == s["params"]
    meta = json.loads((tmp_path / "t" / "student.json").read_text())
    assert meta["model"] == "model" and meta["adapter"] is None
    spec = resolve(str(tmp_path / "t"))
    assert spec.adapter is None and spec.kind == "hf_dir"
    assert [f.split("/")[-1] for f in spec.served_files] == ["model.safetensors"]
    trained, _ = load(spec)
    base, _ = load(resolve(str(tiny_model)))
    w1, w0 = trained.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight
    assert not torch.equal(w1, w0)


def test_target_modules_are_configurable(tiny_model, dataset, tmp_path):
    train(small_cfg(tiny_model, max_steps=1, target_modules=["q_proj", "v_proj"]), dataset, tmp_path / "t")
    conf = json.loads((tmp_path / "t" / "adapter" / "adapter_config.json").read_text())
    assert sorted(conf["target_modules"]) == ["q_proj", "v_proj"]
    assert all(("q_proj" in k or "v_proj" in k) for k in adapter_weights(tmp_path / "t" / "adapter"))


def test_a_config_that_cannot_fit_fails_early(tiny_model, dataset, tmp_path):
    with pytest.raises(UserError) as e:
        train(small_cfg(tiny_model, memory_limit_gb=0.0001), dataset, tmp_path / "t")
    msg = str(e.value)
    assert "GiB" in msg and "gradient_checkpointing" in msg and "grad_accum" in msg and "\n" not in msg
    assert not (tmp_path / "t" / "checkpoints").exists()


def test_dtype_auto_is_fp32_on_cpu(tiny_model, dataset, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CPU behaviour")
    s = train(small_cfg(tiny_model, max_steps=1), dataset, tmp_path / "t")
    assert s["dtype"] == "float32" and s["device"] == "cpu"
    with pytest.raises(UserError, match="bfloat16 needs a GPU"):
        train(small_cfg(tiny_model, dtype="bfloat16"), dataset, tmp_path / "u")


def test_seed_preset_is_the_seed_recipe():
    from mathdistill.config import build, read_preset

    t = build(TrainConfig, read_preset("seed")["train"])
    assert (t.learning_rate, t.epochs, t.lora_r, t.lora_alpha, t.lora_dropout, t.recipe) == (8e-5, 3, 8, 16, 0.1, "seed")
    assert t.finetune == "lora" and t.method == "sft" and t.target_modules == "all-linear"


def test_accelerate_configs_parse():
    import yaml

    root = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    kinds = {f: yaml.safe_load((root / f).read_text())["distributed_type"] for f in
             ("ddp.yaml", "zero2.yaml", "zero3.yaml", "fsdp.yaml")}
    assert kinds == {"ddp.yaml": "MULTI_GPU", "zero2.yaml": "DEEPSPEED", "zero3.yaml": "DEEPSPEED", "fsdp.yaml": "FSDP"}
    for f, stage in (("ds_zero2.json", 2), ("ds_zero3.json", 3)):
        assert json.loads((root / f).read_text())["zero_optimization"]["stage"] == stage
    for f in ("zero2.yaml", "zero3.yaml"):
        ref = yaml.safe_load((root / f).read_text())["deepspeed_config"]["deepspeed_config_file"]
        assert (root.parents[1] / ref).is_file()


def test_cli_resume_without_checkpoint_is_one_line(tiny_model, dataset, tmp_path, capsys):
    import sys

    from mathdistill import cli

    old = sys.argv
    sys.argv = ["mathdistill", "train", "-d", str(dataset), "-o", str(tmp_path / "t"), "-m", str(tiny_model), "--resume"]
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "no checkpoint" in err and len(err.splitlines()) == 1


def test_resume_after_kill_9(tiny_model, dataset, tmp_path):
    """A real SIGKILL of `mathdistill train` mid-run: the newest checkpoint loads and the resumed run ends with
    the weights of an uninterrupted one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sets = ["--set", "train.lora_r=4", "--set", "train.lora_alpha=8", "--set", "train.heldout_fraction=0.1",
            "--set", "train.max_steps=12", "--set", "train.save_steps=1", "--set", "train.threads=1"]
    args = ["-d", str(dataset), "-m", str(tiny_model), "--lr", "0.005", "--batch-size", "4", *sets]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mathdistill", "train", *args, "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (out / "checkpoints" / "checkpoint-3").exists():
        if proc.poll() is not None:
            pytest.fail("training ended before it could be killed")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "adapter").exists()
    from mathdistill import cli
    from typer.testing import CliRunner

    r = CliRunner().invoke(cli.app, ["train", *args, "-o", str(out), "--resume"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli.app, ["train", *args, "-o", str(tmp_path / "whole")])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from"].startswith("checkpoint-") and summary["steps"] == 12
    wa, wb = adapter_weights(tmp_path / "whole" / "adapter"), adapter_weights(out / "adapter")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-7)
