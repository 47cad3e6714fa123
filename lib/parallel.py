"""Independent jobs (study trainings, seed-design arms) run side by side in worker processes on a CPU.

The mini model trains with one torch thread (``lib.model.cpu_threads_for``: its matrices are too small to share
out), so on a 2-core machine one training leaves a core idle. The book's study chapters train several systems that
do not depend on one another; ``cpu_workers`` of them run at once, each in its own process with one thread, and give
the same bits as one after another (each training seeds itself and runs with the same thread count; tested).
With ``cpu_workers: 1`` (a GPU run) the jobs run here, in order, with nothing started.

A worker dies with the process that started it (Linux ``PR_SET_PDEATHSIG``): a killed book leaves no orphan still
writing checkpoints that a resumed run would race with.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence


@dataclass(frozen=True)
class Job:
    """One call ``fn(*args, **kwargs)``; ``fn`` must be a module-level function (it is sent to a worker by name)."""

    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""
    cost: float = 1.0  # relative run time: the costliest jobs start first, so that the last to finish is a short one


def worker_count(cfg: Mapping[str, Any], n_jobs: int) -> int:
    """How many jobs run at once: the profile's ``cpu_workers``, never more than the jobs or the usable cores."""
    wanted = int(cfg["cpu_workers"]) if cfg.get("cpu_workers") is not None else 1
    if wanted < 1:
        raise ValueError(f"cpu_workers must be 1 or more (got {wanted}): 1 runs the jobs one after another")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(wanted, n_jobs, cores))


def die_with_parent() -> None:
    """In a child process: be killed when the parent dies (Linux), and use one torch thread."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except OSError:  # another libc: the worker then outlives a killed parent, as any subprocess would
            pass
    import torch

    torch.set_num_threads(1)  # the workers share the cores out between them


def _quiet_worker() -> None:
    """A pool worker: dies with its parent, one thread, and prints nothing (its progress bars and "Loading weights"
    lines would interleave with the book's console; the chapter reports each job as it ends)."""
    die_with_parent()
    sys.stdout = sys.stderr = open(os.devnull, "w")


def _call(job: Job) -> Any:
    return job.fn(*job.args, **dict(job.kwargs))


def run_jobs(jobs: Sequence[Job], workers: int, log: Callable[[str], None] | None = None) -> list[Any]:
    """Results of ``jobs`` in their order. ``workers`` > 1: that many worker processes (spawned: a fresh
    interpreter, no state forked from a notebook kernel); a job that fails raises here, naming the job."""
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for job in jobs:
            out.append(_call(job))
            if log and job.name:
                log(f"{job.name}: done")
        return out
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_quiet_worker)
    try:
        order = sorted(range(len(jobs)), key=lambda i: -jobs[i].cost)
        submitted = {i: pool.apply_async(_call, (jobs[i],)) for i in order}
        pending = [submitted[i] for i in range(len(jobs))]
        results = []
        for job, result in zip(jobs, pending):
            try:
                results.append(result.get())
            except Exception as err:
                raise RuntimeError(f"job {job.name or len(results)} failed in a worker process: "
                                   f"{type(err).__name__}: {err}") from err
            if log and job.name:
                log(f"{job.name}: done")
        pool.close()
        return results
    finally:
        pool.terminate()  # after close(): the workers have finished; after an error or a kill: stop the others now
        pool.join()
