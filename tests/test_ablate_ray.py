"""ablate --ray against a real local Ray cluster (2 CPUs, started once for this module): the same leaderboard as
--jobs 1, and a cell whose Ray worker dies is rerun from its cached stages, or reported, while the others are kept."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(600)  # a lost task would block in ray.wait: fail instead of hanging the suite

from ablate_util import count, executions, tiny_base  # noqa: E402
from mathdistill import ablate_exec  # noqa: E402
from mathdistill.ablate import GridSpec, ablate  # noqa: E402
from mathdistill.errors import PartialRun  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module; its workers import this test module (the hooks below) and the sources."""
    here = Path(__file__).parent
    env, sigterm, hook = dict(os.environ), signal.getsignal(signal.SIGTERM), sys.excepthook
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent / "src")] + ([old] if old else []))
    try:  # the raylet, started here, hands this environment to its workers
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=80 * 2**20)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    yield
    ray.shutdown()
    # what ray.init changes in this process (RAY_* and PYTHONBREAKPOINT variables, handlers), for the tests after
    os.environ.clear()
    os.environ.update(env)
    signal.signal(signal.SIGTERM, sigterm)
    sys.excepthook = hook


def spec(model: Path, **kw) -> GridSpec:
    """The tiny grid of test_ablate, without the base model's evals (not what these tests are about)."""
    base = tiny_base(model) | {"eval_base": False}
    return GridSpec.model_validate({"name": "t", "base": base, "bootstrap": {"samples": 100}, **kw})


def board(folder: Path) -> list[dict[str, str]]:
    with open(folder / "leaderboard.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_ray_gives_the_leaderboard_of_one_job(cluster, tiny_model, tmp_path):
    g = spec(tiny_model, grid={"eval.max_new_tokens": [4, 8]}, threads=1)  # two cells, one training; one thread each
    one = ablate(g, tmp_path / "one")
    by_ray = ablate(g.model_copy(update={"ray": "auto"}), tmp_path / "ray")  # the cluster this process is connected to
    assert ray.is_initialized(), "a cluster the caller connected to stays connected"
    assert by_ray["counts"] == one["counts"] == {"total": 2, "ok": 2, "cached": 0, "failed": 0}
    # every stage ran on the cluster, in Ray's worker processes, not here
    assert count(tmp_path / "ray" / "cache") == count(tmp_path / "one" / "cache")
    assert all(c["pid"] != os.getpid() for c in by_ray["cells"]) and all(c["pid"] == os.getpid() for c in one["cells"])
    # the same cells with the same scores and intervals, row for row
    assert board(tmp_path / "ray") == board(tmp_path / "one")
    assert len(board(tmp_path / "one")) == 2
    strip = lambda s: [{k: c[k] for k in ("name", "values", "status")} for c in s["cells"]]  # noqa: E731
    assert strip(by_ray) == strip(one)
    assert len({r["mean_tokens"] for r in board(tmp_path / "one")}) == 2, "cells a mix-up would show"
    for name in ("max_new_tokens=4", "max_new_tokens=8"):
        # every score and interval of the student (its meta holds paths, timings and thread counts)
        a, b = (json.loads((tmp_path / d / "cells" / name / "scores.json").read_text())["student"] for d in ("one", "ray"))
        assert {k: v for k, v in a.items() if k != "meta"} == {k: v for k, v in b.items() if k != "meta"}


# What the cluster's workers run in place of run_cell (this module is on their PYTHONPATH): a cell whose worker
# process is SIGKILLed (as the OOM killer or a lost node would) once as its training starts, and one whose worker is
# killed on every try. Each try is one line in <out>/<cell>.tries.

def _tried(args) -> int:
    tries = Path(args[6]) / f"{args[0]}.tries"
    with open(tries, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    return len(tries.read_text().splitlines())


def killed_in_first_training(*args, **kw):
    first = _tried(args) == 1
    real = ablate_exec.execute

    def execute(*a, on_stage, **k):
        def stage(s: str, cached: bool) -> None:
            on_stage(s, cached)
            if first and s == "train" and not cached:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, on_stage=stage, **k)

    ablate_exec.execute = execute  # in this worker process only, for this task (a worker runs one at a time)
    try:
        return ablate_exec.run_cell(*args, **kw)
    finally:
        ablate_exec.execute = real


def killed_always(*args, **kw):
    _tried(args)
    os.kill(os.getpid(), signal.SIGKILL)


def runs_cell(*args, **kw):
    return {"dies-once": killed_in_first_training, "dies-always": killed_always}[args[0]](*args, **kw)


def test_a_killed_worker_is_retried_then_reported(cluster, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(ablate_exec, "run_cell", runs_cell)  # what run_ray sends to the cluster
    g = spec(tiny_model, ray="auto", cells=[{"name": "dies-once", "set": {"train.seed": 1}},
                                           {"name": "dies-always", "set": {"train.seed": 2}}])
    out = tmp_path / "g"
    with pytest.raises(PartialRun, match="1 of 2 cells failed"):
        ablate(g, out)
    summary = json.loads((out / "ablate.json").read_text())
    assert summary["threads"] == 1  # by default each cell's task takes one of the cluster's CPUs
    cells = {c["name"]: c for c in summary["cells"]}
    # killed as its training started, rerun by Ray in a new worker: the data stages come from the cache
    once = cells["dies-once"]
    assert once["status"] == "ok" and once["reason"] is None
    assert once["executed"][:2] == ["train", "eval student"], once["executed"]
    pids = [int(x) for x in (out / "dies-once.tries").read_text().split()]
    assert len(pids) == 2 and once["pid"] == pids[1] != pids[0]
    log = (out / "cells" / "dies-once" / "log.txt").read_text()
    assert log.count("== cell dies-once") == 2 and log.count("== curate") == 1 and log.count("== train") == 2
    # killed on every try: tried 1 + RAY_RETRIES times, then reported with the reason; the grid is not lost
    bad = cells["dies-always"]
    assert len((out / "dies-always.tries").read_text().split()) == 1 + ablate_exec.RAY_RETRIES
    assert bad["status"] == "failed"
    assert bad["reason"] == (f"worker died on each of its {1 + ablate_exec.RAY_RETRIES} tries (killed or crashed); "
                             "its output is in cells/dies-always/log.txt")
    assert [r["label"] for r in executions(out / "cache", "") if r["stage"] == "train"] == ["dies-once:train"]
    rows = {r["cell"]: r for r in board(out)}
    assert rows["dies-once"]["status"] == "ok" and float(rows["dies-once"]["overall"]) >= 0
    assert "| dies-always | worker died on each of its" in (out / "leaderboard.md").read_text()
