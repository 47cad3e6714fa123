"""Command line: ``python -m lib <command>``.

  book     run the chapters in order with papermill (what ``make book`` calls)
  rerun    run a recorded run again from its folder alone
  status   say what a run folder holds and whether it is complete
  predict  score any clips with a system and write the predictions table
  segment  find speech segments in whole recordings with any system (RTTM + segments table)
  clean-notebooks  strip outputs from the stored notebooks
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .config import ConfigError, available_profiles, parse_override


def _cmd_book(args: argparse.Namespace) -> int:
    from .book import run_book

    overrides = dict(parse_override(s) for s in args.set or [])
    chapters = [c for c in (args.chapters or "").replace(",", " ").split() if c] or None
    run_book(
        args.profile, overrides, run_id=args.run_id, chapters=chapters, force=args.force, progress_bar=args.progress,
        results_dir=args.results_dir, notebooks_dir=args.notebooks_dir, publish_figures=False if args.no_publish_figures else None,
    )
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .book import read_params, run_sweep
    from .config import resolve
    from .results import run_dir_for

    probe = resolve(args.profile)
    main_run = run_dir_for(args.profile, args.run_id, probe["results_root"])
    overrides = (read_params(main_run).get("overrides") or {}) if (main_run / "params.yaml").exists() else {}
    overrides.update(dict(parse_override(s) for s in args.set or []))
    cfg = resolve(args.profile, overrides)
    seeds = [int(s) for s in args.seeds.replace(",", " ").split()] if args.seeds else cfg["sweep_seeds"]
    variants = args.variants.replace(",", " ").split() if args.variants else cfg["sweep_variants"]
    run_sweep(args.profile, overrides, main_run, seeds, variants, [str(c) for c in cfg["sweep_chapters"]], gpus=args.gpus)
    return 0


def _cmd_rerun(args: argparse.Namespace) -> int:
    from .book import rerun

    rerun(args.run_dir, run_id=args.run_id, notebooks_dir=args.notebooks_dir)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from .book import missing_steps, read_params, read_status

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} is not a folder; give a run folder, e.g. results/cpu/book")
    status = read_status(run_dir)
    if status["state"] == "missing" and not (run_dir / "params.yaml").exists():
        raise FileNotFoundError(f"{run_dir} holds no status.json nor params.yaml: not a run folder made by `python -m lib book`")
    print(f"run {run_dir.name}: {status['state']}" + (f" ({status['note']})" if status.get("note") else ""))
    try:
        params = read_params(run_dir)
        print(f"profile {params['profile']}, overrides {params.get('overrides') or {}}, commit {(params.get('git') or {}).get('commit')}")
    except (FileNotFoundError, ConfigError) as err:
        print(f"warning: {err}")
    missing = missing_steps(status)
    if missing and status["state"] != "complete":
        print(f"  still to run: {', '.join(missing)}")
    for name, chapter in status.get("chapters", {}).items():
        extra = f" {chapter['seconds']}s" if "seconds" in chapter else ""
        extra += f"  {chapter['error']}" if "error" in chapter else ""
        print(f"  {name}: {chapter['state']}{extra}")
    return 0 if status["state"] == "complete" else 1


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict_report

    report = predict_report(
        system=args.system, manifest=args.manifest, audio_root=args.audio_root, out=args.out,
        normalization=args.normalization, batch_size=args.batch_size, on_error=args.on_error,
    )
    print(f"wrote {report.out} ({report.n_scored} clips" + (f", {len(report.failures)} skipped" if report.failures else "") + ")")
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from .recordings import SegmentParams, segment_recordings

    params = SegmentParams(
        window_ms=args.window_ms, hop_ms=args.hop_ms, frame_ms=args.frame_ms, aggregate=args.aggregate,
        onset=args.onset, offset=args.onset if args.offset is None else args.offset, min_speech_ms=args.min_speech_ms,
        min_silence_ms=args.min_silence_ms, normalization=args.normalization,
    )
    options = {"batch_size": args.batch_size} if args.batch_size else {}
    out = segment_recordings(args.system, args.audio, args.out, params, audio_root=args.audio_root, run_id=args.run_id,
                             batch=args.windows_per_call, progress=not args.no_progress, reference=args.reference,
                             collar_s=args.collar, **options)
    print(f"wrote {out}/segments.csv and {out}/rttm/")
    if args.reference:
        import json

        m = json.loads((out / "metrics.json").read_text())
        print(f"against {args.reference} (collar {args.collar:g} s): detection error rate {m['detection_error_rate']:.3f} "
              f"[{m['detection_error_rate_lo']:.3f}, {m['detection_error_rate_hi']:.3f}] (false alarm {m['false_alarm_rate']:.3f}, "
              f"missed {m['miss_rate']:.3f}), precision {m['precision']:.3f}, recall {m['recall']:.3f}, frame AUC "
              f"{m['frame_auc']:.3f}; {out}/metrics.json")
    return 0


def _cmd_clean(args: argparse.Namespace) -> int:
    from .book import NOTEBOOKS_DIR, clean_notebook

    paths = [Path(p) for p in args.paths] or sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    changed = [p for p in paths if clean_notebook(p)]
    for p in changed:
        print(f"cleaned {p}")
    return 1 if (changed and args.check) else 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lib", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    book = sub.add_parser("book", help="execute the chapters in order with papermill")
    book.add_argument("--profile", default="cpu", help=f"one of: {', '.join(available_profiles())}")
    book.add_argument("--run-id", default=None, help="run folder name (default: a timestamp); an incomplete run of that name is resumed")
    book.add_argument("--chapters", default=None, help="chapters to run, e.g. '01 03 05' (default: all)")
    book.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a profile parameter (value read as YAML)")
    book.add_argument("--force", action="store_true", help="rerun chapters already done in an incomplete run")
    book.add_argument("--progress", action="store_true", help="show papermill's per-cell progress bar")
    book.add_argument("--results-dir", default=None, help="where run folders go (default: the profile's results_root)")
    book.add_argument("--notebooks-dir", default=str(Path(__file__).resolve().parent.parent / "notebooks"), help=argparse.SUPPRESS)
    book.add_argument("--no-publish-figures", action="store_true",
                      help="keep the figures in the run folder only (sweep members); by default a whole-book run copies them to figures/ when it completes")
    book.set_defaults(func=_cmd_book)

    sw = sub.add_parser("sweep", help="train and evaluate a list of seeds x variants on a run's bank")
    sw.add_argument("--profile", default="cpu")
    sw.add_argument("--run-id", default="book", help="the main run whose bank the sweep uses (chapter 01 must be done)")
    sw.add_argument("--seeds", default=None, help="e.g. '1 2 3' (default: the profile's sweep_seeds)")
    sw.add_argument("--variants", default=None, help="e.g. 'attn attn_mlp' (default: the profile's sweep_variants)")
    sw.add_argument("--gpus", type=int, default=0, help="0: one member after another; N: one member per GPU at a time")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE")
    sw.set_defaults(func=_cmd_sweep)

    rr = sub.add_parser("rerun", help="run a recorded run again from its folder alone")
    rr.add_argument("run_dir")
    rr.add_argument("--run-id", default=None)
    rr.add_argument("--notebooks-dir", default=str(Path(__file__).resolve().parent.parent / "notebooks"), help=argparse.SUPPRESS)
    rr.set_defaults(func=_cmd_rerun)

    st = sub.add_parser("status", help="what a run folder holds; exit 1 unless complete")
    st.add_argument("run_dir")
    st.set_defaults(func=_cmd_status)

    pr = sub.add_parser("predict", help="score clips with a system and write the predictions table")
    pr.add_argument("--system", required=True, help="silero | webrtc | firered | <run folder> | <run folder>:<system name>")
    pr.add_argument("--manifest", required=True, help="CSV with at least path and label columns (clip_id optional)")
    pr.add_argument("--audio-root", required=True, help="folder the manifest's paths are relative to")
    pr.add_argument("--out", required=True, help="predictions CSV to write")
    pr.add_argument("--normalization", default=None, choices=["none", "peak", "rms"], help="default: the system's own")
    pr.add_argument("--batch-size", type=_positive_int, default=32)
    pr.add_argument("--on-error", default="stop", choices=["stop", "skip"],
                    help="an unreadable or unscorable clip: stop (default; nothing written) or skip it, write the rest and list the failures")
    pr.set_defaults(func=_cmd_predict)

    sg = sub.add_parser("segment", help="speech segments in whole recordings with any system: one RTTM per recording + segments.csv")
    sg.add_argument("--system", required=True, help="silero | webrtc | firered | <run folder> | <run folder>:<system name>")
    sg.add_argument("--audio", required=True, help="an audio file, a folder of audio files, or a CSV with a path column (recording_id optional)")
    sg.add_argument("--out", required=True, help="a new folder (or one segment wrote before): rttm/, frames/, segments.csv, recordings.csv")
    sg.add_argument("--audio-root", default=None, help="folder a CSV's paths are relative to (default: the CSV's folder)")
    sg.add_argument("--window-ms", type=float, default=1000.0, help="clip window slid over the recording (not used by the VADs, which give their own frames)")
    sg.add_argument("--hop-ms", type=float, default=250.0, help="step between windows")
    sg.add_argument("--frame-ms", type=float, default=10.0, help="frame grid of the speech probability and of segment boundaries")
    sg.add_argument("--aggregate", default="mean", choices=["mean", "max", "min"], help="how the windows covering a frame give its probability")
    sg.add_argument("--onset", type=float, default=0.5, help="speech starts where the frame probability reaches this")
    sg.add_argument("--offset", type=float, default=None, help="... and lasts while it stays at or above this (default: = onset)")
    sg.add_argument("--min-speech-ms", type=float, default=0.0, help="drop speech segments shorter than this")
    sg.add_argument("--min-silence-ms", type=float, default=0.0, help="fill silences shorter than this between speech segments")
    sg.add_argument("--normalization", default=None, choices=["none", "peak", "rms"], help="default: the system's own (per window)")
    sg.add_argument("--batch-size", type=int, default=None, help="the system's batch size (default: its own)")
    sg.add_argument("--windows-per-call", type=int, default=256, help="windows handed to the system per call")
    sg.add_argument("--reference", default=None, help="RTTM file or folder of RTTM files (file id = recording id): also measure (metrics.json)")
    sg.add_argument("--collar", type=float, default=0.5, help="with --reference: seconds around each reference boundary left out of scoring (half either side)")
    sg.add_argument("--run-id", default=None, help="run_id column of segments.csv (default: segment-<timestamp>)")
    sg.add_argument("--no-progress", action="store_true", help="no progress bar")
    sg.set_defaults(func=_cmd_segment)

    cl = sub.add_parser("clean-notebooks", help="strip outputs/execution counts from stored notebooks")
    cl.add_argument("paths", nargs="*")
    cl.add_argument("--check", action="store_true", help="exit 1 if any notebook had to be cleaned")
    cl.set_defaults(func=_cmd_clean)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .book import ChapterFailed

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ChapterFailed as err:  # a chapter raised: its cell and error, no traceback of the runner
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ConfigError, FileNotFoundError, ValueError) as err:  # RunBusy, damaged files, bad input: all say what to do
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # permissions, a full disk, a read-only folder: name the file
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"error: {err.strerror or err}{where}; check that the path exists and that you may write there", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
