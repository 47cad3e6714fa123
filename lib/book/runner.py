"""Running the book: the chapters (and the seed sweep) in order into one run folder, resumed where a run stopped.

A whole-book run that completes copies its figures to the project's ``figures/`` (each says its run).
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from tqdm.auto import tqdm

from .. import io, sweep
from ..config import ConfigError, resolve
from ..results import make_run_id, run_dir_for
from .chapters import NOTEBOOKS_DIR, SWEEP_STEP, book_steps, kernel_name, list_chapters
from .execute import execute_chapter
from .run_folder import (LOCK_NAME, check_corpus, missing_steps, params_digest, read_params, read_params_or_none,
                         read_status, run_lock, run_plan, status_path, write_params)


class RunBusy(ConfigError):
    """Another process is running this run folder right now."""


def run_book(
    profile: str = "cpu",
    overrides: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    chapters: Iterable[str] | None = None,
    results_dir: str | Path | None = None,
    force: bool = False,
    progress_bar: bool = False,
    log: Callable[[str], None] = lambda s: print(s, flush=True),
    notebooks_dir: str | Path = NOTEBOOKS_DIR,
    publish_figures: bool | None = None,
) -> Path:
    """Execute the chapters in order into ``results/<profile>/<run_id>/`` and return that folder.

    An existing incomplete run with the same parameters is resumed (its done chapters are skipped);
    a complete one is run again from the start; ``force`` reruns every chapter regardless. The run is
    complete only when every step of its plan is done: the whole book (with the sweep when the profile has
    sweep seeds) for a run started without ``chapters``, else the chapters asked for, over all invocations.
    ``publish_figures`` (default: for a whole-book run) copies the run's figures to the project's
    ``figures/`` when the run completes.
    """
    overrides = dict(overrides or {})
    cfg = resolve(profile, overrides)  # validates the profile, every override name and its type up front
    run_dir = run_dir_for(profile, run_id or make_run_id(), results_dir or cfg["results_root"]).resolve()
    chapters = list(chapters) if chapters is not None else None
    want_sweep = bool(chapters) and SWEEP_STEP in chapters
    if chapters is not None:
        chapters = [c for c in chapters if c != SWEEP_STEP]
    selected = list_chapters(chapters, Path(notebooks_dir)) if (chapters or not want_sweep) else []
    if not selected and not want_sweep:
        raise ConfigError(f"no chapters found in {notebooks_dir}")
    digest = params_digest(profile, overrides)
    # The sweep belongs to a whole-book run (or is asked for by name in --chapters).
    include_sweep = bool(cfg["sweep_seeds"]) and (chapters is None or want_sweep)
    steps = book_steps(selected, include_sweep)
    step_names = [s.stem if isinstance(s, Path) else s for s in steps]
    whole_book = [s.stem if isinstance(s, Path) else s
                  for s in book_steps(list_chapters(None, Path(notebooks_dir)), bool(cfg["sweep_seeds"]))]

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_lock(run_dir)
    from filelock import Timeout

    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunBusy(
            f"run {run_dir} is being executed by another process right now (it holds {run_dir / LOCK_NAME}); wait for it "
            f"to finish (`python -m lib status {run_dir}`), or use another run id"
        ) from None
    try:
        return _run_locked(profile, overrides, cfg, run_dir, digest, steps, step_names, whole_book, chapters is None,
                           force, progress_bar, log, notebooks_dir, publish_figures)
    finally:
        lock.release()


def _run_locked(
    profile: str, overrides: dict[str, Any], cfg: dict[str, Any], run_dir: Path, digest: str, steps: list[Path | str],
    step_names: list[str], whole_book: list[str], is_whole_book: bool, force: bool, progress_bar: bool,
    log: Callable[[str], None], notebooks_dir: str | Path, publish_figures: bool | None,
) -> Path:
    status = read_status(run_dir, locked_by_caller=True)
    recorded = read_params_or_none(run_dir)
    recorded_digest = status.get("params_digest") or (recorded or {}).get("params_digest")
    if status["state"] != "missing" and recorded_digest is not None and recorded_digest != digest:
        raise ConfigError(
            f"run folder {run_dir} holds a run with other parameters; pick another run id (RUN_ID=...) "
            "or remove that folder"
        )
    if status["state"] != "missing":
        check_corpus(run_dir, cfg)
    if status["state"] == "damaged":
        log(f"warning: {status['note']}")
    resuming = status["state"] in {"incomplete", "interrupted", "failed", "damaged"} and not force
    done = {name for name, c in status.get("chapters", {}).items() if c.get("state") == "done"} if resuming else set()

    # What the run is meant to hold: the whole book, or (for --chapters) what earlier invocations asked for
    # plus what is asked now. A complete run run again from the start keeps its plan.
    previous_plan = run_plan(status) if status["state"] != "damaged" else []
    wanted = set(whole_book) if is_whole_book else set(previous_plan) | set(step_names)
    order = {n: i for i, n in enumerate(whole_book)}
    plan = sorted(wanted, key=lambda n: (order.get(n, len(order)), n))
    for path in io.clear_leftovers(run_dir):  # what a killed run left half-written (we hold the lock: nobody writes here)
        log(f"cleared {path.relative_to(run_dir)}, left by an interrupted run")
    write_params(run_dir, profile, overrides, cfg)
    kept: dict[str, Any] = {}
    for n, c in status.get("chapters", {}).items():
        # Steps done earlier stay recorded (skipped now, or not asked for this time); a step not asked for this
        # time stays as it was (a sweep interrupted by a kill is not dropped), its "running" now "incomplete".
        if n in done or (n not in step_names and (c.get("state") == "done" or n in plan)):
            kept[n] = c if c.get("state") != "running" else {**c, "state": "incomplete"}
    status = {
        "state": "running",
        "pid": os.getpid(),
        "profile": profile,
        "params_digest": digest,
        "plan": plan,
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "chapters": kept,
    }
    io.write_json(status_path(run_dir), status)
    kernel = kernel_name()
    total = len(steps)
    log(f"speechbook: profile {profile}, run folder {run_dir}" + (" (resuming)" if resuming and done else ""))
    name = ""
    # On a CPU with cores to spare, the sweep runs beside the chapters from the moment the bank exists
    beside = SWEEP_STEP in step_names and SWEEP_STEP not in done and not int(cfg["sweep_gpus"]) and int(cfg["cpu_workers"]) >= 2
    background = None
    try:
        for i, step in enumerate(steps, 1):
            name = step.stem if isinstance(step, Path) else step
            if beside and background is None and (run_dir / "bank.yaml").exists():
                background = start_beside_book(profile, overrides, run_dir, cfg, notebooks_dir)
                log(f"sweep: started beside the chapters (log: {run_dir / 'sweep.log'})")
            if name in done:
                log(f"[{i}/{total}] {name}: already done in this run, skipped")
                continue
            status["chapters"][name] = {"state": "running", "started": _dt.datetime.now().isoformat(timespec="seconds")}
            io.write_json(status_path(run_dir), status)
            log(f"[{i}/{total}] {name}: running ...")
            start = time.monotonic()
            if step == SWEEP_STEP:
                if background is not None:
                    background.join()  # then run_sweep finds its members complete (or resumes one that failed, and says why)
                run_sweep(profile, overrides, run_dir, cfg["sweep_seeds"], cfg["sweep_variants"],
                          [str(c) for c in cfg["sweep_chapters"]], gpus=int(cfg["sweep_gpus"]), log=log,
                          notebooks_dir=notebooks_dir)
            else:
                execute_chapter(step, run_dir, profile, overrides, kernel, progress_bar, status, start)
            seconds = time.monotonic() - start
            status["chapters"][name] = {"state": "done", "seconds": round(seconds, 1),
                                        **status.pop("gpu_peaks", {}).get(name, {})}
            io.write_json(status_path(run_dir), status)
            log(f"[{i}/{total}] {name}: done in {seconds:.1f}s")
    except (KeyboardInterrupt, SystemExit):
        if background is not None:
            stop_beside_book(background)
        status["state"] = "interrupted"
        io.write_json(status_path(run_dir), status)
        log(f"interrupted: rerun the same command to finish run {run_dir.name}")
        raise
    except Exception as err:
        if background is not None:
            stop_beside_book(background)
        if status["state"] != "failed":  # a chapter failure has recorded itself already
            status["state"] = "failed"
            status["chapters"][name] = {"state": "failed", "error": f"{type(err).__name__}: {err}"}
            io.write_json(status_path(run_dir), status)
        raise
    missing = missing_steps(status)
    seconds = sum(c.get("seconds", 0) for c in status["chapters"].values())
    if missing:
        status["state"] = "incomplete"
        status["note"] = f"not yet done in this run: {', '.join(missing)}"
        io.write_json(status_path(run_dir), status)
        log(f"speechbook: the chapters asked for are done, but run {run_dir.name} is not complete: {', '.join(missing)} "
            "still to run (the same command without --chapters, or --chapters with them, finishes it)")
        return run_dir
    status["state"] = "complete"
    status["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    io.write_json(status_path(run_dir), status)
    log(f"speechbook: run complete in {seconds:.0f}s -> {run_dir}")
    if publish_figures if publish_figures is not None else set(whole_book) <= set(plan):
        copied = publish_run_figures(run_dir, Path(cfg["figures_dir"]))
        if copied:
            log(f"speechbook: {len(copied)} figure files of run {run_dir.name} copied to {cfg['figures_dir']}")
    return run_dir


def publish_run_figures(run_dir: Path, target: Path) -> list[Path]:
    """Copy a complete run's ``figures/`` into the project's figures folder (each file atomically)."""
    source = Path(run_dir) / "figures"
    if not source.is_dir():
        return []
    target.mkdir(parents=True, exist_ok=True)
    io.clear_leftovers(target)  # only names lib.io's writers make
    copied = []
    for path in sorted(source.iterdir()):
        if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
            io.write_bytes(target / path.name, path.read_bytes())
            copied.append(target / path.name)
    return copied


def rerun(run_dir: str | Path, run_id: str | None = None, **kwargs: Any) -> Path:
    """Run a recorded run again from its folder alone (same profile, overrides, chapters)."""
    recorded = read_params(run_dir)
    status = read_status(run_dir)
    chapters = run_plan(status) or None
    return run_book(
        recorded["profile"], recorded.get("overrides") or {}, run_id=run_id or f"{Path(run_dir).name}-rerun-{make_run_id()}",
        chapters=chapters, results_dir=Path(run_dir).parent.parent, **kwargs,
    )


# --------------------------------------------------------------------------------------------------
# The seed sweep (lib.sweep: its members), run by the same runner


def run_sweep(
    profile: str,
    overrides: Mapping[str, Any],
    main_run_dir: str | Path,
    seeds: Sequence[int],
    variants: Sequence[str],
    chapters: Sequence[str],
    gpus: int = 0,
    log: Callable[[str], None] = lambda s: print(s, flush=True),
    notebooks_dir: str | Path | None = None,
) -> list[Path]:
    """Run (or finish) every member of the sweep; returns their run folders."""
    notebooks_dir = Path(notebooks_dir or NOTEBOOKS_DIR)
    main_run_dir = Path(main_run_dir)
    results_dir = main_run_dir.parent.parent
    todo, done = sweep.prepare(main_run_dir, overrides, seeds, variants, chapters)
    log(f"sweep of {main_run_dir.name}: {len(done) + len(todo)} members, {len(done)} already complete, {len(todo)} to run" + (f" on {gpus} GPUs" if gpus else ""))
    bar = tqdm(total=len(done) + len(todo), initial=len(done), desc="sweep", unit="run")
    if gpus <= 0:
        for m, _ in todo:
            run_book(profile, m.overrides, run_id=m.run_id, chapters=chapters, results_dir=results_dir, log=lambda s: None,
                     notebooks_dir=notebooks_dir, publish_figures=False)  # the project's figures/ are the main run's
            bar.update()
    else:
        sweep.run_on_gpus([m for m, _ in todo], profile, results_dir, notebooks_dir, chapters, gpus, done_one=bar.update)
    bar.close()
    return [run_dir for _, run_dir in done + todo]


def start_beside_book(profile: str, overrides: Mapping[str, Any], main_run_dir: Path, cfg: Mapping[str, Any],
                      notebooks_dir: str | Path):
    """Start the CPU sweep in a background process (spawned; it dies with this one), logging to
    ``<run>/sweep.log``; returns the process (``join()`` it, or :func:`stop_beside_book`)."""
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(
        target=_sweep_beside_book, name="speechbook-sweep",
        args=(profile, dict(overrides), str(main_run_dir), list(cfg["sweep_seeds"]), list(cfg["sweep_variants"]),
              [str(c) for c in cfg["sweep_chapters"]], str(notebooks_dir)))
    proc.start()
    return proc


def stop_beside_book(proc, timeout: float = 60.0) -> None:
    """Interrupt a background sweep (its members record themselves as interrupted and resume next time)."""
    import signal

    if proc.is_alive():
        os.kill(proc.pid, signal.SIGINT)
        proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _sweep_beside_book(profile: str, overrides: dict[str, Any], main_run_dir: str, seeds: list[int],
                       variants: list[str], chapters: list[str], notebooks_dir: str) -> None:
    from ..parallel import die_with_parent

    die_with_parent()
    log_path = Path(main_run_dir) / "sweep.log"
    with open(log_path, "a", encoding="utf-8") as out:
        sys.stdout = sys.stderr = out  # progress bars too: the book's console shows its own chapters only

        def log(line: str) -> None:
            out.write(line + "\n")
            out.flush()

        run_sweep(profile, overrides, main_run_dir, seeds, variants, chapters, gpus=0, log=log,
                  notebooks_dir=notebooks_dir)
