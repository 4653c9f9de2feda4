"""ablate on a tiny model: the stage cache (hits and misses counted by stage executions, not timed), a failed
cell, resume after a killed grid, parallel cells, and `run` sharing the same cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ablate_util import count, executions, tiny_base, write_grid
from mathdistill.ablate import GridSpec, ablate
from mathdistill.errors import PartialRun
from mathdistill.run import RunConfig, run


def grid(model: Path, **kw) -> GridSpec:
    return GridSpec.model_validate({"name": "t", "base": tiny_base(model), "bootstrap": {"samples": 100}, **kw})


def test_cache_hits_and_misses(tiny_model, tmp_path):
    cache = tmp_path / "cache"
    # 1. two cells that differ only in an eval field: one dataset, one training, four evals (student + base each)
    s1 = ablate(grid(tiny_model, grid={"eval.max_new_tokens": [4, 6]}), tmp_path / "g1", cache_dir=cache)
    assert s1["counts"] == {"total": 2, "ok": 2, "cached": 0, "failed": 0}
    assert count(cache) == {"problems": 1, "sources": 1, "generate": 2, "curate": 1, "train": 1, "eval": 4}

    # 2. the same grid again: nothing runs, every cell is reported as cached
    s2 = ablate(grid(tiny_model, grid={"eval.max_new_tokens": [4, 6]}), tmp_path / "g1", cache_dir=cache)
    assert s2["counts"]["cached"] == 2
    assert count(cache) == {"problems": 1, "sources": 1, "generate": 2, "curate": 1, "train": 1, "eval": 4}

    # 3. a data field (think kept, with source a's <think> outputs): the new cell recurates and retrains;
    #    the other cell equals a cell of grid 1 and is taken whole from the cache
    s3 = ablate(grid(tiny_model, grid={"curate.keep_think": [False, True]}), tmp_path / "g3", cache_dir=cache)
    assert [c["cached"] for c in s3["cells"]] == [True, False]
    assert s3["cells"][1]["executed"] == ["curate", "train", "eval student"]
    assert count(cache) == {"problems": 1, "sources": 1, "generate": 2, "curate": 2, "train": 2, "eval": 5}
    think = Path(s3["cells"][1]["stages"]["curate"]["dir"]) / "dataset.json"
    assert any(r["output"].startswith("<think>") for r in json.loads(think.read_text()))

    # 4. on source b alone (no think part anywhere) keep_think changes no training row: both cells curate,
    #    but the dataset has the same bytes, so they share one training and one eval
    base = tiny_base(tiny_model) | {"use": ["b"]}
    s4 = ablate(GridSpec.model_validate({"name": "t4", "base": base, "grid": {"curate.keep_think": [False, True]},
                                         "bootstrap": {"samples": 100}}), tmp_path / "g4", cache_dir=cache)
    assert s4["counts"]["ok"] == 2
    assert count(cache) == {"problems": 1, "sources": 1, "generate": 2, "curate": 4, "train": 3, "eval": 6}
    st = [c["stages"] for c in s4["cells"]]
    assert st[0]["train"]["key"] == st[1]["train"]["key"] and st[0]["curate"]["key"] != st[1]["curate"]["key"]

    # 5. `run` on the config of a grid cell, on the same cache: nothing runs; the run layout and scores.json are
    #    the usual ones, with the cell's scores
    cfg = RunConfig.model_validate(tiny_base(tiny_model) | {"eval": tiny_base(tiny_model)["eval"] | {"max_new_tokens": 6}})
    scores = run(cfg, tmp_path / "run", cache_dir=cache)
    assert count(cache)["train"] == 3 and sum(count(cache).values()) == 17
    assert set(scores) == {"base", "student", "config", "run"}
    assert len(scores["run"]["cached"]) == len(scores["run"]["stage_keys"])
    cell = json.loads((tmp_path / "g1" / "cells" / "max_new_tokens=6" / "scores.json").read_text())
    assert scores["student"]["overall"] == cell["student"]["overall"]
    assert {k for k in cell} == {"base", "student", "config"}
    for f in ("problems/train.jsonl", "problems/eval.jsonl", "problems/sources/a.jsonl", "generate/traces.jsonl",
              "generate/a/traces.jsonl", "curate/dataset.json", "train/adapter/adapter_config.json", "train/student.json",
              "eval/base/predictions.jsonl", "eval/student/scores.json", "scores.json", "report.md", "config.yaml"):
        assert (tmp_path / "run" / f).is_file(), f
    for f in ("leaderboard.md", "leaderboard.csv", "leaderboard.html", "ablate.json"):
        assert (tmp_path / "g1" / f).is_file(), f


def test_run_default_cache_lives_in_the_run_folder(tiny_model, tmp_path):
    cfg = RunConfig.model_validate(tiny_base(tiny_model) | {"eval_base": False})
    first = run(cfg, tmp_path / "r")
    assert first["run"]["cached"] == [] and (tmp_path / "r" / "cache" / "executions.jsonl").is_file()
    again = run(cfg, tmp_path / "r", overwrite=True)
    assert set(again["run"]["cached"]) == set(again["run"]["stage_keys"])
    assert again["student"]["overall"] == first["student"]["overall"]
    assert "base" not in again


def test_failed_cells_are_reported_and_the_others_go_on(tiny_model, tmp_path):
    cache = tmp_path / "cache"
    spec = grid(tiny_model, cells=[
        {"name": "ok", "set": {"train.seed": 1}},
        {"name": "bad-scheduler", "set": {"train.lr_scheduler": "no-such-schedule"}},
        {"name": "nan", "set": {"train.learning_rate": 1.0e6, "train.warmup_ratio": 0.0, "train.max_steps": 3}},
        {"name": "no-model", "set": {"train.base_model": str(tmp_path / "missing-model")}},
    ])
    with pytest.raises(PartialRun, match="3 of 4 cells failed"):
        ablate(spec, tmp_path / "g", cache_dir=cache)
    summary = json.loads((tmp_path / "g" / "ablate.json").read_text())
    status = {c["name"]: (c["status"], c["reason"]) for c in summary["cells"]}
    assert status["ok"] == ("ok", None)
    assert status["bad-scheduler"][0] == "failed" and "no-such-schedule" in status["bad-scheduler"][1]
    assert status["nan"][0] == "failed" and status["nan"][1].startswith("train: training diverged to NaN")
    assert status["no-model"][0] == "failed" and "missing-model" in status["no-model"][1]
    md = (tmp_path / "g" / "leaderboard.md").read_text()
    failed = md.split("## Failed cells", 1)[1]
    for name in ("bad-scheduler", "nan", "no-model"):
        assert f"| {name} |" in failed
    assert "| 1 | ok |" in md
    # a diverged model is never cached as a result
    assert not [r for r in executions(cache) if r["stage"] == "eval" and r["label"].startswith("nan")]

    # rerun: recorded failures are reported at once (no training runs again), --retry-failed reruns them
    trains = count(cache)["train"]
    with pytest.raises(PartialRun):
        ablate(spec, tmp_path / "g", cache_dir=cache)
    failed_runs = lambda: [r["label"] for r in executions(cache, "") if r["status"].startswith("failed")]  # noqa: E731
    assert count(cache)["train"] == trains and failed_runs() == ["bad-scheduler:train", "nan:train"]
    again = {c["name"]: c["reason"] for c in json.loads((tmp_path / "g" / "ablate.json").read_text())["cells"]}
    assert again["nan"].startswith("train: training diverged") and "failed before on the same inputs" in again["nan"]
    assert again["bad-scheduler"].startswith("train: ValueError: no-such-schedule")
    with pytest.raises(PartialRun):
        ablate(spec.model_copy(update={"retry_failed": True}), tmp_path / "g", cache_dir=cache)
    assert failed_runs() == ["bad-scheduler:train", "nan:train"] * 2


def _wait_for(pred, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"ablate exited early: {log.read_text()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.2)


def test_killed_grid_resumes_where_it_stopped(tiny_model, tmp_path, capfd):
    g = write_grid(tmp_path / "grid.yaml", tiny_model, grid={"train.seed": [1, 2]})
    out, cache = tmp_path / "out", tmp_path / "out" / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "mathdistill", "ablate", str(g), "--out", str(out)]
    with open(tmp_path / "first.log", "w") as log:
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
        try:
            _wait_for(lambda: count(cache)["train"] >= 1, 300, p, tmp_path / "first.log")
            os.killpg(p.pid, signal.SIGKILL)  # the whole process group, mid-grid
        finally:
            p.wait(30)
    before = executions(cache)
    done_trains = {r["key"] for r in before if r["stage"] == "train"}
    assert len(done_trains) == 1
    assert not (out / "ablate.json").exists()

    from mathdistill.ablate import load_grid

    ablate(load_grid(g, extra={"jobs": 2}), out)  # the rerun, with the cells in worker processes
    after = executions(cache)[len(before):]
    assert not {r["key"] for r in after if r["stage"] == "train"} & done_trains, "a finished training ran again"
    assert not [r for r in after if r["stage"] in ("problems", "sources", "generate", "curate")]
    assert sorted(r["stage"] for r in executions(cache) if r["stage"] == "train") == ["train"] * 2
    summary = json.loads((out / "ablate.json").read_text())
    assert summary["counts"]["ok"] == 2
    ran = [c for c in summary["cells"] if not c["cached"]]
    assert ran and all(c["pid"] != os.getpid() for c in ran)  # worker processes, not the parent
    assert summary["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    err = capfd.readouterr().err  # progress: cells done / cached / running / failed, with an ETA
    assert "running 2 · failed 0 · eta ?" in err and "[2/2] done 2 · cached 0 · running 0 · failed 0 · eta 0s" in err


def test_ray_missing_is_one_line_before_any_work(tiny_model, tmp_path, monkeypatch):
    from mathdistill.errors import UserError

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(UserError, match=r"--ray needs the ray package: pip install") as e:
        ablate(grid(tiny_model, grid={"train.seed": [1, 2]}, ray="auto"), tmp_path / "g")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "g").exists()


def test_ray_with_no_cluster_is_one_line_before_any_work(tiny_model, tmp_path, monkeypatch):
    import types

    from mathdistill.errors import UserError

    def init(**kw):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.")

    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False, init=init))
    with pytest.raises(UserError, match=r"--ray auto: no Ray cluster to run the cells on .*--ray local") as e:
        ablate(grid(tiny_model, grid={"train.seed": [1, 2]}, ray="auto"), tmp_path / "g")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "g").exists()  # nothing written: no cache, no grid.yaml


def test_a_cell_that_trains_on_the_shared_eval_set_fails(tiny_model, tmp_path):
    from mathdistill.errors import UserError
    from mathdistill.problems import problems
    from mathdistill.run import execute
    from mathdistill.stages import StageStore

    cfg = RunConfig.model_validate(tiny_base(tiny_model))
    problems(cfg.problems, tmp_path / "p")
    leaky = tmp_path / "eval.jsonl"  # a shared eval set that holds one of this config's training problems
    leaky.write_text((tmp_path / "p" / "train.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(UserError, match="1 training problems are also in the shared eval set"):
        execute(cfg, StageStore(tmp_path / "cache"), eval_problems=leaky)
    assert count(tmp_path / "cache") == {"problems": 1}


def test_user_problem_files_are_part_of_the_key(tmp_path):
    from mathdistill.problems import ProblemsConfig, problems
    from mathdistill.run import problems_inputs
    from mathdistill.stages import StageStore, stage_config

    tr, ev = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    tr.write_text('{"id": "t1", "question": "1 + 2 =", "answer": "3"}\n')
    ev.write_text('{"id": "e1", "question": "2 + 2 =", "answer": "4"}\n')
    cfg = ProblemsConfig(train_file=str(tr), eval_file=str(ev))
    store = StageStore(tmp_path / "cache")
    run1 = store.run("problems", stage_config("problems", cfg), problems_inputs(cfg), lambda d: problems(cfg, d))
    same = store.run("problems", stage_config("problems", cfg), problems_inputs(cfg), lambda d: problems(cfg, d))
    tr.write_text('{"id": "t1", "question": "1 + 5 =", "answer": "6"}\n')  # the user edits the file
    run2 = store.run("problems", stage_config("problems", cfg), problems_inputs(cfg), lambda d: problems(cfg, d))
    assert run1.key == same.key and not same.executed and run2.key != run1.key and run2.executed
    assert "1 + 5" in (run2.dir / "train.jsonl").read_text()


MEMORY_PROBE = """
import psutil, torch
from mathdistill.stages import release_memory
proc = psutil.Process()
start = proc.memory_info().rss
for _ in range(2):  # large freed blocks raise glibc's mmap threshold: later mid-size tensors stay in its heap
    xs = [torch.ones(64, 1024, 64) for _ in range(12)]
    del xs
ys = [torch.ones(1024, 256) for _ in range(400)]
del ys
held = proc.memory_info().rss - start
release_memory()
print(held, proc.memory_info().rss - start)
"""


def test_stage_memory_goes_back_to_the_os():
    """A grid runs stages one after another in one process; the memory a training freed must be given back,
    or the next cell's fit check sees it as used (a real grid failed that way: 10.5 GiB free of 23).
    In a fresh process, so the allocator's state does not depend on the tests before it."""
    # glibc's dynamic thresholds made the held memory vary run to run (17 MiB to 400 MiB): fixed ones put the
    # freed 1 MiB tensors in its heap and keep it from trimming by itself, as a long training leaves it
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**40),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    held, after = map(int, r.stdout.split()[-2:])
    if held < 200 * 2**20:
        pytest.skip(f"this allocator gave the memory back by itself ({held / 2**20:.0f} MiB held)")
    assert after < held / 4
