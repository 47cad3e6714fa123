"""Executing one chapter with papermill into a run folder."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from .. import io
from ..config import PROJECT_ROOT
from .chapters import chapter_parameters
from .run_folder import RUNNER_ENV, status_path


class ChapterFailed(RuntimeError):
    """A chapter raised; the message carries the failing cell and its error."""


def execute_chapter(
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
    from ..model import GPU_PEAKS_ENV

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
        io.write_json(status_path(run_dir), status)
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
