"""Running the grid's cells: one cell through the stage cache (a plain function a worker process or a Ray task
can run, its output in the cell's log), and the grid's progress line."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import progress as _progress
from .errors import PartialRun, UserError
from .io import write_json
from .run import Executed, RunConfig, StageStore, execute, per_model


# ------------------------------------------------------------------------------------------ one cell

@contextlib.contextmanager
def _cell_log(path: Path):
    """Send the cell's stage output (Rich console, progress lines, warnings) to its log file."""
    from rich.console import Console

    path.parent.mkdir(parents=True, exist_ok=True)
    old = _progress.console  # info() and bar() print through this module global
    with open(path, "a", encoding="utf-8") as fh:
        _progress.console = Console(file=fh, highlight=False, soft_wrap=True)  # a file: plain lines, no colours
        try:
            with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                yield fh
        finally:
            _progress.console = old


def _reason(stage: str | None, e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    what = msg if isinstance(e, (UserError, PartialRun)) else f"{type(e).__name__}: {msg}".rstrip(": ")
    return f"{stage}: {what}" if stage and not what.startswith(f"{stage.split()[0]}:") else what


def _stages_info(ex: Executed) -> dict[str, Any]:
    return {k: {"key": r.key, "dir": str(r.dir), "executed": r.executed, "seconds": r.seconds} for k, r in ex.stages.items()}


def run_cell(name: str, folder: str, values: dict[str, Any], config: dict[str, Any], cache: str, eval_file: str,
             out_dir: str, threads: int | None = None, retry_failed: bool = False) -> dict[str, Any]:
    """Run one cell through the stage cache; never raises for a failing cell: the record says why.

    A plain function of JSON-able arguments, so a worker process or a Ray task can run it.
    """
    t0 = time.monotonic()
    cell_dir = Path(out_dir) / "cells" / folder
    cfg = RunConfig.model_validate(config)
    if threads:
        cfg.train.threads = threads  # not part of any stage key
        cfg.eval.threads = threads
    ex = Executed()
    current: list[str | None] = [None]

    def on_stage(stage: str, cached: bool) -> None:
        current[0] = stage
        if not cached:
            print(f"== {stage}", flush=True)

    status, reason = "ok", None
    with _cell_log(cell_dir / "log.txt"):
        print(f"== cell {name} ({time.strftime('%Y-%m-%d %H:%M:%S')}, pid {os.getpid()})", flush=True)
        try:
            execute(cfg, StageStore(cache, retry_failed), eval_problems=eval_file, label=name, on_stage=on_stage, ex=ex)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - a failing cell is a result, not a crash of the grid
            status, reason = "failed", _reason(current[0], e)
            print(f"cell failed: {reason}", flush=True)
    rec = {"name": name, "folder": folder, "values": values, "status": status, "reason": reason,
           "executed": ex.executed(), "cached": status == "ok" and not ex.executed(),
           "seconds": round(time.monotonic() - t0, 3), "stages": _stages_info(ex), "pid": os.getpid()}
    write_json(cell_dir / "cell.json", rec)
    if status == "ok":
        scores = {k: per_model(ex.scores[k]) for k in ("base", "student") if k in ex.scores}
        scores["config"] = cfg.model_dump(mode="json")
        write_json(cell_dir / "scores.json", scores)
    return rec


def _worker_init(threads: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---------------------------------------------------------------------------------------- progress

class GridProgress:
    """Cells done / cached / running / failed, with an ETA from the cells that ran."""

    def __init__(self, total: int, jobs: int, stream=None):
        from rich.console import Console

        self.total, self.jobs = total, jobs
        self.done = self.cached = self.failed = self.running = 0
        self.ran_seconds: list[float] = []
        self.todo = total
        self.console = Console(file=stream or sys.stderr, highlight=False)
        self.t0 = time.monotonic()

    def eta(self) -> str:
        left = self.todo + self.running
        if not left:
            return "0s"
        if not self.ran_seconds:
            return "?"
        s = sum(self.ran_seconds) / len(self.ran_seconds) * left / max(1, min(self.jobs, left))
        return f"{s / 60:.0f}m" if s >= 120 else f"{s:.0f}s"

    def status(self) -> str:
        return (f"[{self.done + self.cached + self.failed}/{self.total}] done {self.done} · cached {self.cached} · "
                f"running {self.running} · failed {self.failed} · eta {self.eta()}")

    def start(self, name: str) -> None:
        self.todo -= 1
        self.running += 1
        self.console.print(f"ablate: started {name} · {self.status()}", soft_wrap=True)

    def finish(self, rec: dict[str, Any]) -> None:
        if rec.get("ran", True):
            self.running -= 1
        if rec["status"] != "ok":
            self.failed += 1
            what = f"FAILED: {rec['reason']}"
        elif rec["cached"]:
            self.cached += 1
            what = "cached"
        else:
            self.done += 1
            what = f"done in {rec['seconds']:.0f}s (ran {', '.join(rec['executed'])})"
        if rec["executed"] or rec["status"] != "ok":
            self.ran_seconds.append(rec["seconds"])
        self.console.print(f"ablate: {rec['name']}: {what} · {self.status()}", soft_wrap=True, markup=False)


# ---------------------------------------------------------------------------------------------- Ray

RAY_RETRIES = 1  # reruns of a cell whose Ray worker died; its finished stages come back from the cache


def _failed(cell, reason: str) -> dict[str, Any]:
    return {"name": cell.name, "folder": cell.folder, "values": cell.values, "status": "failed", "reason": reason,
            "executed": [], "cached": False, "seconds": 0.0, "stages": {}}


def ray_reason(ray, e: BaseException, folder: str) -> str:
    """One line for a Ray task that returned no record: what killed it, how often it was tried, where its log is."""
    tries = f"on each of its {1 + RAY_RETRIES} tries" if RAY_RETRIES else ""
    log = f"its output is in cells/{folder}/log.txt"
    ex = ray.exceptions
    if isinstance(e, ex.OutOfMemoryError):  # retried as Ray's memory monitor allows (task_oom_retries)
        return f"out of memory: Ray's memory monitor killed the worker; {log}"
    if isinstance(e, ex.WorkerCrashedError):
        return f"worker died {tries} (killed or crashed); {log}"
    if isinstance(e, (ex.NodeDiedError, ex.LocalRayletDiedError)):
        return f"Ray node died while running the cell; {log}"
    return f"Ray: {_reason(None, e)}"


def ray_connect(ray, address: str, cpus: int | None = None) -> bool:
    """Connect this process to the Ray cluster at ``address`` (``local``: start one here with ``cpus`` CPUs, no
    dashboard); return whether it did, so the caller disconnects after. A process already connected (a script
    that called ``ray.init`` itself) keeps its cluster. Raises :class:`UserError` when no cluster answers."""
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"num_cpus": cpus, "include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=address, log_to_driver=False, **kw)
    except Exception as e:  # noqa: BLE001 - ConnectionError (no cluster), ValueError (an address Ray can't parse)
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0].rstrip(".")
        raise UserError(f"--ray {address}: no Ray cluster to run the cells on (Ray: {msg}); start one with `ray start "
                        "--head` (then --ray auto), or use --ray local to start one on this machine for the grid") from None
    return True


def run_ray(ray, address: str, todo: list, args, prog: GridProgress, cpus: int = 1, local_cpus: int | None = None):
    """Run ``todo``'s cells as Ray tasks on the cluster at ``address``; yield each cell's record as it finishes.

    One task per cell (``run_cell(*args(cell))``) with ``cpus`` CPUs and one GPU when the cluster has GPUs. A
    task whose worker process dies (killed, crashed, out of memory, node lost) is rerun :data:`RAY_RETRIES`
    times by Ray, resuming from the stages it finished (the stage cache); after that the cell is a failed
    record with the reason (:func:`ray_reason`) and the other cells go on. A cell that fails inside
    ``run_cell`` is never retried: it is a result. ``local_cpus``: CPUs of a cluster started with ``local``.
    """
    started = ray_connect(ray, address, local_cpus)
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=RAY_RETRIES, retry_exceptions=False)(run_cell)
        pending = {}
        for c in todo:
            pending[task.remote(*args(c))] = c
            prog.start(c.name)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            c = pending.pop(done[0])
            try:
                rec = ray.get(done[0])
            except Exception as e:  # noqa: BLE001 - the task itself died: a result of the cell, not of the grid
                rec = _failed(c, ray_reason(ray, e, c.folder))
            prog.finish(rec)
            yield rec
    finally:
        if started:
            ray.shutdown()
