"""Inside a chapter: resolving its configuration in its run folder, its bank, and how its results are labelled."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from ..config import PROJECT_ROOT, ConfigError, resolve
from ..results import make_run_id, read_bank_pointer, run_dir_for, write_bank_pointer
from .run_folder import RUNNER_ENV, check_corpus, read_params, read_status, write_params


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
    from ..plots import set_house_style  # every chapter's figures in the book's one style

    set_house_style()
    if random_weights(cfg):  # a random-weight 7B folder (bench.architecture.save_random_model): code and cost only
        cfg["smoke"] = True
    return cfg


def random_weights(cfg: Mapping[str, Any]) -> bool:
    from ..model.build.qwen7b import is_random_weights

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
        from ..data import build_bank

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
    from ..model import model_label as label

    return label(str(cfg.get("model_name_or_path", "")))


def figure_source(cfg: Mapping[str, Any], seeds: Any = "run", model: bool = True) -> Any:
    """The caption of a chapter's figure (``lib.plots.Source``): the run (``<profile>/<run_id>``), the
    model (:func:`model_label`; ``model=False`` for a figure of data or baselines only) and the seed(s):
    ``"run"`` for the run's own seed, ``None`` for none, else a seed, a list of seeds or text."""
    from ..plots import Source

    return Source(run=f"{cfg.get('profile', '?')}/{cfg['run_id']}", model=model_label(cfg) if model else None,
                  seeds=cfg.get("seed") if isinstance(seeds, str) and seeds == "run" else seeds,
                  smoke=bool(cfg.get("smoke")) and model)
