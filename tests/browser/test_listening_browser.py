"""The listening tool where users meet it: JupyterLab in Debian's Chromium, driven by Playwright.

What it does, all on localhost and with bounded waits:
1. writes a small synthetic bank (WAV clips + manifest), a run folder (predictions.csv, bank.yaml,
   params.yaml) and a two-cell notebook into a temporary folder;
2. starts JupyterLab headless from this Python (the project's venv: ``python -m jupyterlab``, kernel
   ``python3``, which is this same interpreter) on a free port with a random token, with its config,
   runtime, settings and workspace folders in the temporary folder and nothing fetched from the net;
3. opens the notebook in ``/usr/bin/chromium`` through Playwright (``executable_path``: Playwright never
   downloads a browser here), runs it with the menu *Run > Run All Cells*, waits for the widget;
4. checks that the list of misclassified clips and an ``<audio>`` player are visible (and that Chromium
   decoded the WAV: its duration is the clip's), that no widget is stuck at "Loading widget...", and
   that picking a true class in the page's dropdown re-filters the list through the kernel;
5. presses keys (j/k move the selection without moving JupyterLab's cell selection, space plays the
   selected clip, 3 tags it) and clicks a tag button: the tags land in the run's ``listening_tags.csv``;
   compares with a second system (the McNemar discordant clips, both ``p_speech`` on the cards) and
   exports the list to the run folder;
6. saves ``test-artifacts/listening_tool.png`` (+ ``_nonspeech``, ``_keyboard_tags``, ``_compare``), and on failure
   the page, a screenshot and the server log there too; the server is always stopped.

Run it with ``make test-browser`` (which first runs ``.ci/browser-setup.sh``: apt-get install chromium),
or ``.venv/bin/python -m pytest -m browser tests/browser``. Without ``/usr/bin/chromium`` it is skipped,
unless ``SPEECHBOOK_REQUIRE_BROWSER=1`` (set by ``make test-browser`` / ``.ci/run``) makes that a failure.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.browser

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("SPEECHBOOK_TEST_ARTIFACTS", PROJECT_ROOT / "test-artifacts"))
CHROMIUM = os.environ.get("SPEECHBOOK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 60
WIDGET_WAIT_S = 120
SR = 16_000

# clip_id, label, category, duration_ms, snr_db, noise_type, pred, p_speech  (system "energy")
CLIPS = [
    ("clip_a", "speech", "speech", 500, 0.0, "white", "nonspeech", 0.08),
    ("clip_b", "speech", "speech", 200, 10.0, "pink", "nonspeech", 0.35),
    ("clip_c", "speech", "speech", 1000, 20.0, "white", "speech", 0.90),
    ("clip_d", "nonspeech", "dog", 500, 0.0, "pink", "speech", 0.97),
    ("clip_e", "nonspeech", "laughing", 300, 10.0, "white", "speech", 0.71),
    ("clip_f", "nonspeech", "rain", 1000, 20.0, "pink", "nonspeech", 0.12),
    ("clip_g", "nonspeech", "coughing", 100, 0.0, "white", "speech", 0.64),
]
N_WRONG, N_WRONG_NONSPEECH = 5, 3
RUN = Path("results") / "cpu" / "demo_run"


def _require_browser() -> None:
    reason = None
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing: run .ci/browser-setup.sh (apt-get install -y chromium) first"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright Python package is missing: install the project's [test] extra"
    if reason:
        if os.environ.get("SPEECHBOOK_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (SPEECHBOOK_REQUIRE_BROWSER=1)")
        pytest.skip(reason)


def _write_fixture(root: Path) -> Path:
    """Synthetic bank, run folder and notebook under ``root``; returns the notebook path."""
    import nbformat
    import soundfile as sf

    from lib import results

    rng = np.random.default_rng(1)
    bank_dir = root / "bank"
    (bank_dir / "clips").mkdir(parents=True)
    rows = []
    for i, (cid, label, cat, dur, snr, noise, _pred, _p) in enumerate(CLIPS):
        n = SR * dur // 1000
        t = np.arange(n) / SR
        tone = np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 4 * t)) if label == "speech" else 0.0
        audio = 0.2 * tone + 0.05 * rng.standard_normal(n)
        sf.write(bank_dir / "clips" / f"{cid}.wav", audio.astype(np.float32), SR, subtype="PCM_16")
        rows.append(dict(clip_id=cid, source_id=f"src{i}", group_id=f"grp{i}", label=label, category=cat, split="test",
                         duration_ms=dur, snr_db=snr, noise_type=noise, rt60_s=0.0, filter="none", seed=i,
                         path=f"clips/{cid}.wav"))
    pd.DataFrame(rows).to_csv(bank_dir / "manifest.csv", index=False)

    run = root / RUN
    preds = pd.DataFrame([dict(run_id="demo_run", system="energy", variant="", seed=-1, clip_id=c[0], label=c[1],
                               pred=c[6], p_speech=c[7]) for c in CLIPS])
    # a second system, right where energy is wrong except on clip_g, and wrong on clip_c
    other = preds.assign(system="silero_vad", pred=preds["label"], p_speech=np.where(preds["label"] == "speech", 0.9, 0.1))
    other.loc[other.clip_id == "clip_c", ["pred", "p_speech"]] = ["nonspeech", 0.3]
    other.loc[other.clip_id == "clip_g", ["pred", "p_speech"]] = ["speech", 0.7]
    preds = pd.concat([preds, other], ignore_index=True)
    results.write_predictions(run, preds)
    results.write_bank_pointer(run, bank_dir / "manifest.csv")
    (run / "params.yaml").write_text("run:\n  smoke: true\nbank:\n  normalization: none\n")

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Listening tool (browser test fixture)"),
        nbformat.v4.new_code_cell(f"import sys\nsys.path.insert(0, {str(PROJECT_ROOT)!r})\n"
                                  "from lib.widgets import listening_tool"),
        nbformat.v4.new_code_cell('tool = listening_tool("results/cpu/demo_run", page_size=3)\ntool'),
    ]
    path = root / "listening_demo.ipynb"
    nbformat.write(nb, path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_lab(root: Path, home: Path, port: int, token: str, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ)
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"), ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces"),
                     ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl")):
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    # User settings: never fetch news or check for updates (no network, no toast over the screenshot).
    notif = home / "lab-settings" / "@jupyterlab" / "apputils-extension"
    notif.mkdir(parents=True, exist_ok=True)
    (notif / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser",
        "--ServerApp.open_browser=False",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--ServerApp.terminals_enabled=False",
        "--LabApp.extension_manager=readonly",  # no extension listings fetched from PyPI
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # CI containers run as root
        cmd.append("--allow-root")
    log = open(log_path, "wb")
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_ready(proc: subprocess.Popen, port: int, token: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"JupyterLab did not answer on port {port} within {SERVER_START_S} s:\n"
                       f"{log_path.read_text()[-3000:]}")


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/<pid>/stat): tells a pid from a reused one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of the processes started by ``pid`` (kernels run in their own sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            started = _start_time(child)
            if started is not None:
                out.append((child, started))
            todo.append(child)
    return out


def _stop(proc: subprocess.Popen, port: int, token: str) -> None:
    """Stop the server and its kernels: the server's own shutdown API, then SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    started = _descendants(proc.pid)
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/shutdown?token={token}", method="POST")
        urllib.request.urlopen(req, timeout=5).close()
        proc.wait(timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
    for pid, start in started:  # a kernel the server could not shut down (same pid, same start time)
        if _start_time(pid) == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def test_listening_tool_in_jupyterlab_chromium():
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WIDGET_WAIT_S * 1000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="speechbook-browser-") as tmp:
        tmp = Path(tmp)
        root, home = tmp / "root", tmp / "home"
        root.mkdir()
        notebook = _write_fixture(root)
        port, token = _free_port(), secrets.token_hex(16)
        log_path = tmp / "jupyterlab.log"
        proc = _start_lab(root, home, port, token, log_path)
        page = None
        try:
            _wait_ready(proc, port, token, log_path)
            with sync_playwright() as pw:
                ctx = pw.chromium.launch_persistent_context(
                    str(tmp / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                    viewport={"width": 1500, "height": 1150},
                )
                ctx.set_default_timeout(WIDGET_WAIT_S * 1000)
                try:
                    page = ctx.new_page()
                    console: list[str] = []
                    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                    page.goto(f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}&reset")
                    _run_all(page, port, token)
                    _check_tool(page, expect)
                    page.screenshot(path=str(ARTIFACTS / "listening_tool.png"))
                    _check_refilter(page, expect)
                    page.screenshot(path=str(ARTIFACTS / "listening_tool_nonspeech.png"))
                    _check_keyboard_and_tags(page, expect, root / RUN)
                    page.screenshot(path=str(ARTIFACTS / "listening_tool_keyboard_tags.png"))
                    _check_compare_and_export(page, expect, root / RUN)
                    page.screenshot(path=str(ARTIFACTS / "listening_tool_compare.png"))
                except Exception:
                    _save_failure(page, log_path, console if page else [])
                    raise
                finally:
                    ctx.close()
        finally:
            _stop(proc, port, token)


def _kernel_idle(port: int, token: str) -> bool:
    """The server holds a session for the notebook whose kernel has started and is idle."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sessions?token={token}", timeout=2) as r:
            sessions = json.load(r)
    except OSError:
        return False
    return any((s.get("kernel") or {}).get("execution_state") == "idle" for s in sessions)


def _run_all(page, port: int, token: str) -> None:
    """Wait until the notebook's kernel is up (server side and page side), then Run > Run All Cells.

    Running before the kernel exists would make JupyterLab ask which kernel to start; should that
    dialog appear anyway, its preselected kernel (python3) is accepted.
    """
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(state="visible")
    deadline = time.monotonic() + WIDGET_WAIT_S
    while not _kernel_idle(port, token):
        _accept_kernel_dialog(page)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the notebook's kernel was not idle within {WIDGET_WAIT_S} s")
        time.sleep(0.5)
    page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
        state="attached")
    _accept_kernel_dialog(page)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def _accept_kernel_dialog(page) -> None:
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    if dialog.count():
        dialog.locator("button.jp-mod-accept").click()


def _check_tool(page, expect) -> None:
    tool = page.locator(".speechbook-listening-tool")
    expect(tool).to_be_visible()
    status = tool.locator(".speechbook-status")
    expect(status).to_contain_text(f"{N_WRONG} misclassified clips match")
    clips = tool.locator(".speechbook-clip")
    expect(clips).to_have_count(3)  # page_size=3
    expect(clips.first).to_contain_text("clip_d")  # most confidently wrong: a dog called speech at 0.97
    expect(clips.first).to_contain_text("true: NONSPEECH")
    expect(clips.first).to_contain_text("predicted: SPEECH")
    expect(clips.first).to_contain_text("p_speech = 0.970")
    expect(tool.locator(".speechbook-clip img").first).to_be_visible()
    audio = tool.locator("audio.speechbook-audio").first
    expect(audio).to_be_visible()
    tool.scroll_into_view_if_needed()
    # Chromium decoded the WAV bytes: the player knows the 500 ms clip's duration.
    page.wait_for_function(
        "a => a.readyState >= 1 && Math.abs(a.duration - 0.5) < 0.01", arg=audio.element_handle(), timeout=30_000
    )
    expect(page.get_by_text("Loading widget...")).to_have_count(0)
    expect(page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")).to_have_count(0)
    expect(page.get_by_text("SMOKE RESULT")).to_be_visible()


def _check_refilter(page, expect) -> None:
    """Pick the true class in the page's dropdown: the kernel re-filters and the page redraws."""
    tool = page.locator(".speechbook-listening-tool")
    select = tool.locator(".widget-dropdown", has_text="true class").locator("select")
    select.select_option(label="nonspeech (true class)")
    expect(tool.locator(".speechbook-status")).to_contain_text(f"{N_WRONG_NONSPEECH} misclassified clips match")
    expect(tool.locator(".speechbook-clip")).to_have_count(3)
    expect(tool.locator(".speechbook-clip", has_text="true: SPEECH")).to_have_count(0)


def _check_keyboard_and_tags(page, expect, run: Path) -> None:
    """Keys move the selection and play the selected clip; 1-3 tag it, and the tag lands in the run's CSV;
    JupyterLab's own j/k (select the next/previous cell) stay out of the tool."""
    tool = page.locator(".speechbook-listening-tool")
    tool.get_by_role("button", name="reset filters").click()
    expect(tool.locator(".speechbook-status")).to_contain_text(f"{N_WRONG} misclassified clips match")
    expect(page.locator(".speechbook-listening-tool.speechbook-keys-ready")).to_have_count(1)
    active_js = "() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')].findIndex(c => c.classList.contains('jp-mod-active'))"
    active_cell = page.evaluate(active_js)
    tool.locator(".speechbook-summary").click()  # focus the tool (not a dropdown)
    page.keyboard.press("j")
    expect(tool.locator(".speechbook-status")).to_contain_text("clip 2 selected")
    cards = tool.locator(".speechbook-clip")
    expect(cards.nth(1)).to_have_class(re.compile("speechbook-selected"))
    page.keyboard.press("k")
    expect(tool.locator(".speechbook-status")).to_contain_text("clip 1 selected")
    assert page.evaluate(active_js) == active_cell  # k did not select the previous cell
    page.keyboard.press(" ")
    page.wait_for_function(
        "() => { const a = document.querySelector('.speechbook-selected audio.speechbook-audio');"
        " return a && (!a.paused || a.ended || a.currentTime > 0); }", timeout=20_000)
    page.keyboard.press("3")  # tag the selected clip (clip_d) mislabeled
    expect(tool.locator(".speechbook-message")).to_contain_text("clip_d: mislabeled")
    cards.nth(1).get_by_role("button", name="ambiguous").click()  # a click on the second card's tag button
    expect(tool.locator(".speechbook-message")).to_contain_text("ambiguous")
    tags = pd.read_csv(run / "listening_tags.csv", dtype=str)
    assert dict(zip(tags["clip_id"], tags["tag"])) == {"clip_d": "mislabeled", "clip_a": "ambiguous"}
    expect(tool.locator(".speechbook-duration").first).to_contain_text("500 ms")


def _check_compare_and_export(page, expect, run: Path) -> None:
    """Compare with a second system: the McNemar discordant clips, both systems' p_speech on the cards;
    export writes the list to the run folder."""
    tool = page.locator(".speechbook-listening-tool")
    select = tool.locator(".widget-dropdown", has_text="compare with B").locator("select")
    select.select_option(label="silero_vad")
    status = tool.locator(".speechbook-status")
    expect(status).to_contain_text("4 clips match")
    expect(status).to_contain_text("only A is right on 1, only B on 4")
    first = tool.locator(".speechbook-clip").first
    expect(first).to_contain_text("clip_d")
    expect(first).to_contain_text("B silero_vad: p_speech = 0.100")
    tool.get_by_role("button", name="export list").click()
    expect(tool.locator(".speechbook-message")).to_contain_text("exported 4 clips")
    exported = sorted((run / "listening_exports").glob("listening_*.csv"))
    assert exported and list(pd.read_csv(exported[-1])["clip_id"]) == ["clip_d", "clip_a", "clip_e", "clip_b"]


def _save_failure(page, log_path: Path, console: list[str]) -> None:
    try:
        if page is not None:
            page.screenshot(path=str(ARTIFACTS / "listening_tool_failure.png"))
            (ARTIFACTS / "listening_tool_failure.html").write_text(page.content())
        (ARTIFACTS / "listening_tool_console.log").write_text("\n".join(console))
        if log_path.exists():
            (ARTIFACTS / "listening_tool_jupyterlab.log").write_text(log_path.read_text(errors="replace"))
    except Exception as exc:  # never hide the real failure
        print(f"could not save failure artifacts: {exc}", file=sys.stderr)
