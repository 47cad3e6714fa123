"""The book runner: execute the chapters in order with papermill, one run folder per run.

``results/<profile>/<run_id>/`` receives ``params.yaml`` (the resolved parameters, the git commit, the
package versions and the corpus manifest's checksum), one executed notebook per chapter, and
``status.json``, which says which chapters are done, which failed and whether the run is complete.

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

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
KERNEL_NAME = "speechbook"
SWEEP_STEP = "sweep"
RUN_LAST = ("06_statistics",)
# Versions recorded in every run folder: the packages whose behaviour the numbers depend on.
RECORDED_PACKAGES = (
    "torch", "transformers", "peft", "accelerate", "bitsandbytes", "numpy", "scipy", "pandas", "librosa",
    "soundfile", "pyroomacoustics", "scikit-learn", "statsmodels", "silero-vad", "webrtcvad-wheels", "papermill",
)


class ChapterFailed(RuntimeError):
    """A chapter raised; the message carries the failing cell and its error."""


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
    return yaml.safe_load(path.read_text())


# --------------------------------------------------------------------------------------------------
# Inside a chapter


def setup_chapter(profile: str = "cpu", run_dir: str | Path | None = None, **params: Any) -> dict[str, Any]:
    """Resolve a chapter's configuration: profile < the run's overrides < the chapter's own parameters.

    Call it right after the parameters cell. With ``run_dir=None`` (interactive use) a fresh run folder
    is made. ``None`` parameter values mean "take the profile's (or the run's) value".
    """
    overrides: dict[str, Any] = {}
    if run_dir is not None and (Path(run_dir) / "params.yaml").exists():
        recorded = read_params(run_dir)
        if recorded["profile"] != profile:
            raise ConfigError(f"run folder {run_dir} was made with profile {recorded['profile']!r}, not {profile!r}")
        overrides.update(recorded.get("overrides") or {})
    overrides.update({k: v for k, v in params.items() if v is not None})
    cfg = resolve(profile, overrides)
    if run_dir is None:
        run_dir = run_dir_for(profile, make_run_id("interactive-"), cfg["results_root"])
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "params.yaml").exists():
        write_params(run_dir, profile, overrides, cfg)
    cfg["run_dir"] = str(run_dir)
    cfg["run_id"] = run_dir.name
    if random_weights(cfg):
        # a model folder with random weights (lib.architecture.save_random_model): every model number of this run
        # tests code and cost only, and says so wherever the smoke label goes (figures included)
        from . import plots

        cfg["smoke"] = True
        plots.SMOKE_PREFIX = RANDOM_WEIGHTS_PREFIX
    return cfg


RANDOM_WEIGHTS_PREFIX = "RANDOM WEIGHTS (Qwen2-Audio-7B architecture, untrained)"


def random_weights(cfg: Mapping[str, Any]) -> bool:
    from .architecture import is_random_weights

    return is_random_weights(cfg.get("model_name_or_path"))


def ensure_bank(cfg: Mapping[str, Any], bank_manifest: str | Path | None = None) -> Path:
    """The bank manifest of this run: given, recorded in the run folder, or built (and recorded) now."""
    run_dir = Path(cfg["run_dir"])
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
    """The prefix every model result of the tiny model (or of a random-weight 7B folder) carries."""
    if random_weights(cfg):
        return f"{RANDOM_WEIGHTS_PREFIX}, not a real result: "
    return "SMOKE (tiny model, not a real result): " if cfg.get("smoke") else ""


# --------------------------------------------------------------------------------------------------
# Running the book


def _status_path(run_dir: Path) -> Path:
    return run_dir / "status.json"


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The run's status; a run whose process died without saying so (SIGKILL) reads as incomplete."""
    path = _status_path(Path(run_dir))
    if not path.exists():
        return {"state": "missing", "chapters": {}}
    status = json.loads(path.read_text())
    if status.get("state") == "running" and not _pid_alive(status.get("pid")):
        status["state"] = "incomplete"
        status["note"] = f"process {status.get('pid')} stopped before the run finished (killed?)"
    return status


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie or a reused pid of another program is not our runner: check the command line if we can.
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        return b"python" in cmdline.read_bytes()
    return True


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
) -> Path:
    """Execute the chapters in order into ``results/<profile>/<run_id>/`` and return that folder.

    An existing incomplete run with the same parameters is resumed (its done chapters are skipped);
    a complete one is run again from the start; ``force`` reruns every chapter regardless.
    """
    overrides = dict(overrides or {})
    cfg = resolve(profile, overrides)  # validates the profile and every override name up front
    chapters = list(chapters) if chapters is not None else None
    want_sweep = bool(chapters) and SWEEP_STEP in chapters
    if chapters is not None:
        chapters = [c for c in chapters if c != SWEEP_STEP]
    selected = list_chapters(chapters, Path(notebooks_dir)) if (chapters or not want_sweep) else []
    if not selected and not want_sweep:
        raise ConfigError(f"no chapters found in {notebooks_dir}")
    run_dir = run_dir_for(profile, run_id or make_run_id(), results_dir or cfg["results_root"]).resolve()
    digest = params_digest(profile, overrides)
    status = read_status(run_dir)
    if status["state"] != "missing" and status.get("params_digest") != digest:
        raise ConfigError(
            f"run folder {run_dir} holds a run with other parameters; pick another run id (RUN_ID=...) "
            "or remove that folder"
        )
    resuming = status["state"] in {"incomplete", "interrupted", "failed", "running"} and not force
    if status["state"] == "running":
        raise RuntimeError(f"run {run_dir} is being executed by process {status.get('pid')} right now")
    done = {name for name, c in status.get("chapters", {}).items() if c.get("state") == "done"} if resuming else set()

    # The sweep belongs to a whole-book run (or is asked for by name in --chapters).
    include_sweep = bool(cfg["sweep_seeds"]) and (chapters is None or want_sweep)
    steps = book_steps(selected, include_sweep)
    step_names = {s.stem if isinstance(s, Path) else s for s in steps}
    run_dir.mkdir(parents=True, exist_ok=True)
    for path in io.clear_leftovers(run_dir):  # what a killed run left half-written (nobody writes here now)
        log(f"cleared {path.relative_to(run_dir)}, left by an interrupted run")
    write_params(run_dir, profile, overrides, cfg)
    status = {
        "state": "running",
        "pid": os.getpid(),
        "profile": profile,
        "params_digest": digest,
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        # Chapters done earlier in this run stay recorded: those being skipped now, and those not asked for
        # this time (`--chapters 06` on a complete run reruns 06 and keeps 01-05 as they were).
        "chapters": {n: c for n, c in status.get("chapters", {}).items()
                     if n in done or (n not in step_names and c.get("state") == "done")},
    }
    io.write_json(_status_path(run_dir), status)
    kernel = kernel_name()
    total = len(steps)
    log(f"speechbook: profile {profile}, run folder {run_dir}" + (" (resuming)" if resuming and done else ""))
    try:
        for i, step in enumerate(steps, 1):
            name = step.stem if isinstance(step, Path) else step
            if name in done:
                log(f"[{i}/{total}] {name}: already done in this run, skipped")
                continue
            status["chapters"][name] = {"state": "running", "started": _dt.datetime.now().isoformat(timespec="seconds")}
            io.write_json(_status_path(run_dir), status)
            log(f"[{i}/{total}] {name}: running ...")
            start = time.monotonic()
            if step == SWEEP_STEP:
                from .sweep import run_sweep

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
        status["state"] = "interrupted"
        io.write_json(_status_path(run_dir), status)
        log(f"interrupted: rerun the same command to finish run {run_dir.name}")
        raise
    except Exception as err:
        if status["state"] != "failed":  # a chapter failure has recorded itself already
            status["state"] = "failed"
            status["chapters"][name] = {"state": "failed", "error": f"{type(err).__name__}: {err}"}
            io.write_json(_status_path(run_dir), status)
        raise
    status["state"] = "complete"
    status["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    io.write_json(_status_path(run_dir), status)
    log(f"speechbook: run complete in {sum(c.get('seconds', 0) for c in status['chapters'].values()):.0f}s -> {run_dir}")
    return run_dir


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
    # the chapter's kernel records its peak GPU memory here if it uses a GPU (lib.model.record_gpu_peaks)
    from .model import GPU_PEAKS_ENV

    peaks_file = run_dir / f".{name}.gpu_peaks.json"
    peaks_file.unlink(missing_ok=True)
    os.environ[GPU_PEAKS_ENV] = str(peaks_file)
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
        os.environ.pop(GPU_PEAKS_ENV, None)
    if peaks_file.exists():
        status.setdefault("gpu_peaks", {})[name] = json.loads(peaks_file.read_text())
        peaks_file.unlink()
    os.replace(partial, run_dir / notebook.name)
    stale = run_dir / f"{name}.failed.ipynb"
    if stale.exists():
        stale.unlink()


def book_steps(chapters: list[Path], include_sweep: bool) -> list[Path | str]:
    """Chapters in reading order, except that the statistics chapter runs last (it reads every system the
    others produced, prompt optimisation's included), and the seed sweep runs just before it."""
    firsts = [c for c in chapters if c.stem not in RUN_LAST]
    lasts = [c for c in chapters if c.stem in RUN_LAST]
    return [*firsts, *([SWEEP_STEP] if include_sweep else []), *lasts]


def rerun(run_dir: str | Path, run_id: str | None = None, **kwargs: Any) -> Path:
    """Run a recorded run again from its folder alone (same profile, overrides, chapters)."""
    recorded = read_params(run_dir)
    status = read_status(run_dir)
    chapters = list(status.get("chapters", {})) or None
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
