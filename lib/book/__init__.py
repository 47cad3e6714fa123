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

Modules, in the order a run meets them: :mod:`.chapters` (which notebooks, in which order, their parameters),
:mod:`.run_folder` (params.yaml with its provenance, status.json, the lock), :mod:`.execute` (one chapter through
papermill), :mod:`.runner` (:func:`run_book`, the seed sweep, :func:`rerun`) and :mod:`.chapter_setup` (what a
chapter calls inside its kernel: :func:`setup_chapter`, :func:`ensure_bank`, the labels of its results).
"""
from __future__ import annotations

from .chapter_setup import (ensure_bank, figure_source, model_label, random_weights, setup_chapter,
                            smoke_label)
from .chapters import (KERNEL_NAME, NOTEBOOKS_DIR, RUN_LAST, SWEEP_STEP, book_steps, chapter_parameters,
                       clean_notebook, kernel_name, list_chapters)
from .execute import ChapterFailed, execute_chapter
from .run_folder import (LOCK_NAME, RECORDED_PACKAGES, RUNNER_ENV, check_corpus, corpus_checksum, git_commit,
                         is_locked, missing_steps, package_versions, params_digest, read_params, read_status,
                         run_lock, run_plan, write_params)
from .runner import RunBusy, publish_run_figures, rerun, run_book, run_sweep, start_beside_book, stop_beside_book

__all__ = [
    "ChapterFailed", "KERNEL_NAME", "LOCK_NAME", "NOTEBOOKS_DIR", "RECORDED_PACKAGES", "RUNNER_ENV", "RUN_LAST",
    "RunBusy", "SWEEP_STEP", "book_steps", "chapter_parameters", "check_corpus", "clean_notebook", "corpus_checksum",
    "ensure_bank", "execute_chapter", "figure_source", "git_commit", "is_locked", "kernel_name", "list_chapters",
    "missing_steps", "model_label", "package_versions", "params_digest", "publish_run_figures", "random_weights",
    "read_params", "read_status", "rerun", "run_book", "run_lock", "run_plan", "run_sweep", "setup_chapter",
    "smoke_label", "start_beside_book", "stop_beside_book", "write_params",
]
