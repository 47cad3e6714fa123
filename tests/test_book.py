"""The papermill runner: run folders, failures, resume after a kill, rerun from a folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from _notebooks import fake_chapter
from lib import book, config

PARAMS = 'profile = "cpu"\nrun_dir = None\nseed = None\n'


def _chapter(folder: Path, name: str, body: str) -> Path:
    return fake_chapter(folder, name, body, PARAMS)


WRITE_MARK = (
    "import lib.book, pathlib\n"
    "cfg = lib.book.setup_chapter(profile, run_dir, seed=seed)\n"
    "pathlib.Path(cfg['run_dir'], '{name}.mark').write_text(str(cfg['seed']))\n"
)


@pytest.fixture
def book_dirs(tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    return nbs, tmp_path / "results"


@pytest.mark.slow
def test_run_book_writes_run_folder_and_resumes_after_failure(book_dirs):
    nbs, res = book_dirs
    _chapter(nbs, "01_first", WRITE_MARK.format(name="01"))
    _chapter(nbs, "02_second", "raise ValueError('the bank is empty: rerun chapter 01')")
    with pytest.raises(book.ChapterFailed, match=r"(?s)02_second failed.*raise ValueError.*the bank is empty"):
        book.run_book("cpu", {"seed": 5, "sweep_seeds": []}, run_id="r1", results_dir=res, notebooks_dir=nbs, log=lambda s: None)
    run = res / "cpu" / "r1"
    status = book.read_status(run)
    assert status["state"] == "failed" and status["chapters"]["01_first"]["state"] == "done"
    assert (run / "01_first.ipynb").exists() and (run / "02_second.failed.ipynb").exists()
    assert (run / "01.mark").read_text() == "5"  # the override reached the chapter
    params = yaml.safe_load((run / "params.yaml").read_text())
    assert params["overrides"] == {"seed": 5, "sweep_seeds": []} and params["resolved"]["seed"] == 5
    assert set(params) >= {"git", "packages", "corpus_manifest_sha256", "python"}
    assert params["packages"]["torch"]

    # Fix the chapter and rerun the same command: chapter 01 is skipped, 02 runs, the run completes.
    _chapter(nbs, "02_second", WRITE_MARK.format(name="02"))
    (run / "01.mark").unlink()
    lines: list[str] = []
    book.run_book("cpu", {"seed": 5, "sweep_seeds": []}, run_id="r1", results_dir=res, notebooks_dir=nbs, log=lines.append)
    assert any("01_first: already done" in line for line in lines)
    assert not (run / "01.mark").exists() and (run / "02.mark").exists()
    assert book.read_status(run)["state"] == "complete"
    assert not (run / "02_second.failed.ipynb").exists()
    # Executed notebooks hold outputs, papermill's injected parameters included.
    executed = nbformat.read(run / "02_second.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)


def test_other_parameters_in_same_run_folder_are_refused(book_dirs, tmp_path):
    nbs, res = book_dirs
    run = res / "cpu" / "r2"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "failed", "params_digest": "something-else", "chapters": {}}))
    _chapter(nbs, "01_first", "pass")
    with pytest.raises(config.ConfigError, match="other parameters"):
        book.run_book("cpu", {"seed": 1}, run_id="r2", results_dir=res, notebooks_dir=nbs, log=lambda s: None)


def test_unknown_override_fails_before_anything_runs(book_dirs):
    nbs, res = book_dirs
    _chapter(nbs, "01_first", "pass")
    with pytest.raises(config.ConfigError, match="unknown parameter 'epoch'"):
        book.run_book("cpu", {"epoch": 1}, run_id="r3", results_dir=res, notebooks_dir=nbs)
    assert not (res / "cpu" / "r3").exists()


def test_chapter_selection_by_number(book_dirs):
    nbs, _ = book_dirs
    for n in ("01_a", "02_b", "03_c"):
        _chapter(nbs, n, "pass")
    assert [p.stem for p in book.list_chapters(["03", "01_a"], nbs)] == ["01_a", "03_c"]
    with pytest.raises(config.ConfigError, match="no chapter '09'"):
        book.list_chapters(["09"], nbs)


@pytest.mark.slow
def test_killed_book_is_marked_incomplete_and_rerun_finishes_it(book_dirs):
    nbs, res = book_dirs
    _chapter(nbs, "01_first", WRITE_MARK.format(name="01"))
    _chapter(nbs, "02_slow", "import time, pathlib\npathlib.Path(run_dir, 'started').write_text('x')\ntime.sleep(120)")
    cmd = [sys.executable, "-m", "lib", "book", "--run-id", "k", "--results-dir", str(res), "--notebooks-dir", str(nbs), "--set", "sweep_seeds=[]"]
    proc = subprocess.Popen(cmd, cwd=config.PROJECT_ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = res / "cpu" / "k"
    deadline = time.monotonic() + 90
    while not (run / "started").exists():
        assert time.monotonic() < deadline, "chapter 02 never started"
        assert proc.poll() is None, "the runner died early"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # runner and kernel, no chance to clean up
    proc.wait()
    status = book.read_status(run)
    assert status["state"] == "incomplete" and "killed" in status["note"]
    assert status["chapters"]["01_first"]["state"] == "done"
    assert (run / "01_first.ipynb").exists() and not (run / "02_slow.ipynb").exists()

    _chapter(nbs, "02_slow", "pass")
    out = subprocess.run(cmd, cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "01_first: already done" in out.stdout
    assert book.read_status(run)["state"] == "complete"
    assert (run / "02_slow.ipynb").exists()
    assert not list(run.glob(".*.running.ipynb"))  # the killed chapter's partial copy was replaced
    st = subprocess.run([sys.executable, "-m", "lib", "status", str(run)], cwd=config.PROJECT_ROOT, capture_output=True, text=True)
    assert st.returncode == 0 and "complete" in st.stdout


@pytest.mark.slow
def test_rerunning_one_chapter_of_a_complete_run_keeps_the_others_recorded(book_dirs):
    nbs, res = book_dirs
    _chapter(nbs, "01_first", WRITE_MARK.format(name="01"))
    _chapter(nbs, "02_second", WRITE_MARK.format(name="02"))
    kw = dict(run_id="r4", results_dir=res, notebooks_dir=nbs, log=lambda s: None)
    book.run_book("cpu", {"sweep_seeds": []}, **kw)
    run = res / "cpu" / "r4"
    (run / "01.mark").unlink()
    book.run_book("cpu", {"sweep_seeds": []}, chapters=["02"], **kw)
    status = book.read_status(run)
    assert status["state"] == "complete" and set(status["chapters"]) == {"01_first", "02_second"}
    assert not (run / "01.mark").exists()  # 01 was not run again
