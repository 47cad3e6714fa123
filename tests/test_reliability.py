"""Reliability catalogue (issue 5, round 2: issue 15): bad input, interrupted runs, reproducibility, atomic writes, fuzzing.

Every item of the issue maps to the test(s) that prove it and to where the check lives. Tests named
``test_reliability::...`` are in this file; the others are reused as they are.

1. Bad input (each error: its type, the file/row/parameter it names, what to do; nothing half-written)

| item | test(s) | check lives in |
|---|---|---|
| corrupt or truncated audio | test_audio::test_truncated_file_names_it, ::test_corrupt_body_names_it; test_reliability::test_bad_audio_names_the_file_and_says_what_to_do[truncated-*, corrupt-flac] | lib.audio.load_audio |
| zero-length audio (0 bytes; header without samples) | test_audio::test_empty_file_names_it, ::test_zero_length_audio_names_it; test_reliability::test_bad_audio_...[empty-file, zero-samples] | lib.audio.load_audio |
| NaN or infinite samples | test_audio::test_nan_or_inf_samples_name_the_file; test_reliability::test_bad_audio_...[nan, inf]; ::test_nonfinite_input_never_normalizes | lib.audio.load_audio, lib.audio.normalize |
| non-audio file with an audio extension | test_audio::test_non_audio_with_audio_extension; test_reliability::test_bad_audio_...[text-as-wav] | lib.audio.load_audio |
| unsupported format | test_audio::test_unsupported_format_names_file_and_alternatives; test_reliability::test_bad_audio_...[m4a] | lib.audio.load_audio |
| stereo and multi-channel (mixed to mono, with a note) | test_audio::test_stereo_is_averaged_with_a_note, ::test_multichannel_is_averaged | lib.audio.load_audio (AudioNote) |
| any sample rate (resampled, with a note) | test_audio::test_any_rate_is_resampled_with_a_note | lib.audio.load_audio, lib.audio.resample |
| all-zero audio under peak and RMS normalization | test_audio::test_all_silent_audio_raises_naming_the_clip; test_audio_properties::test_silent_input_always_raises; test_reliability::test_predict_names_the_row_of_an_unusable_clip_and_keeps_the_old_output | lib.audio.normalize; lib.predict._load_clip |
| manifest with missing columns | test_data::test_manifest_missing_columns_are_named (corpus), ::test_load_bank_errors_name_the_manifest (bank); test_results_predict::test_clip_manifest_names_missing_columns_and_bad_labels (user clips) | lib.data.read_corpus_manifest, lib.data.load_bank, lib.predict.read_clip_manifest |
| duplicated ids | test_data::test_manifest_duplicated_ids, ::test_load_bank_errors_name_the_manifest; test_results_predict::test_clip_manifest_names_missing_columns_and_bad_labels; test_reliability::test_bank_manifest_duplicated_ids_say_what_to_do | same three readers |
| unknown labels | test_data::test_manifest_unknown_labels; test_results_predict::test_clip_manifest_names_missing_columns_and_bad_labels; lib.results.predictions_frame: test_results_predict::test_predictions_frame_rejects_bad_input | same three readers |
| paths outside the audio root, refused without reading | test_data::test_manifest_paths_outside_the_root_are_refused, ::test_load_bank_errors_name_the_manifest; test_results_predict::test_clip_manifest_refuses_paths_outside_root; test_reliability::test_paths_escaping_the_root_are_refused_before_any_read (.., absolute, symlink; bank and predict) | lib.data.resolve_under (corpus, bank); lib.predict.read_clip_manifest |
| missing audio files | test_data::test_manifest_missing_audio_file_is_named; test_reliability::test_predict_lists_missing_files_by_row_before_loading_a_system | lib.data, lib.predict.read_clip_manifest |
| an empty split | test_reliability::test_empty_split_is_named | lib.data.check_splits; lib.train.train |
| a class absent from a split | test_data::test_splits_and_classes_must_not_be_empty | lib.data.check_splits |
| a profile or parameter with a typo | test_config_io::test_typo_in_parameter_lists_valid_names, ::test_typo_in_profile_lists_profiles; test_data::test_typo_in_a_parameter_lists_valid_names, ::test_bad_bank_parameters_are_named; test_book::test_unknown_override_fails_before_anything_runs; test_reliability::test_typos_on_the_command_line_and_in_chapters_list_valid_names | lib.config.resolve / load_profile; lib.data.bank_params; lib.config.section |
| a checkpoint folder from another model or variant | test_train::test_checkpoints_of_another_run_are_refused; test_reliability::test_checkpoint_and_adapter_mismatch_messages_say_what_to_do | lib.train.check_fingerprint |
| an adapter whose base model does not match | test_train::test_an_adapter_on_another_base_model_is_refused; test_reliability::test_checkpoint_and_adapter_mismatch_messages_say_what_to_do | lib.model.load_adapter / check_base_model |

2. Interrupted runs

| item | test(s) | check lives in |
|---|---|---|
| SIGKILL a training process mid-epoch, rerun: resumes, same adapter + predictions bit for bit | test_interrupted_training::test_sigkill_mid_epoch_then_rerun_equals_an_uninterrupted_run (also test_train::test_sigkill_mid_epoch_then_rerun_gives_the_same_adapter, ::test_resume_after_a_crash_ends_with_the_uninterrupted_adapter) | lib.train.train (checkpoints with RNG, optimizer, scheduler, position) |
| a killed `make book` is marked incomplete and a rerun finishes it | test_book::test_killed_book_is_marked_incomplete_and_rerun_finishes_it | lib.book.run_book / read_status |
| ... and leaves the last good results untouched (executed notebook, predictions.csv), even killed mid-write | test_reliability::test_killed_rerun_leaves_the_last_good_results_and_a_rerun_finishes | lib.book.execute_chapter (.running.ipynb), lib.io.atomic_path, lib.io.clear_leftovers |
| a failed chapter reports its cell and error, keeps a .failed.ipynb | test_book::test_run_book_writes_run_folder_and_resumes_after_failure | lib.book.execute_chapter |

3. Reproducibility

| item | test(s) | check lives in |
|---|---|---|
| identical banks for the same seed and parameters | test_data::test_same_seed_same_bank_other_seed_other_bank, ::test_real_bank_reproducible | lib.data.build_bank |
| identical splits | test_data::test_assign_splits_is_group_disjoint_and_proportional | lib.data.assign_splits |
| identical predictions (fresh model; training with a seed) | test_reliability::test_a_freshly_loaded_model_scores_identically; test_train::test_training_is_seeded_bit_for_bit; test_interrupted_training (two processes) | lib.model.score, lib.train |
| identical metrics (seeded bootstrap) | test_reliability::test_metrics_json_is_identical_on_identical_predictions | lib.stats.metrics_json |
| run folder records parameters, git commit, package versions, corpus checksum | test_book::test_run_book_writes_run_folder_and_resumes_after_failure (keys); test_reliability::test_run_folder_records_its_provenance (values) | lib.book.write_params |
| `python -m lib rerun <run folder>` reruns a run from its folder alone | test_reliability::test_rerun_from_the_folder_alone_gives_the_same_outputs | lib.book.rerun, lib.__main__ |

4. Atomic writes

| item | test(s) | check lives in |
|---|---|---|
| every writer in lib/ goes through lib.io (or writes inside an atomic temporary) | test_reliability::test_every_writer_in_lib_is_atomic | lib.io |
| a failed write keeps the old file: predictions, bank manifest, checkpoint, figure | test_reliability::test_failed_write_keeps_the_old_predictions, ::..._bank, ::..._checkpoint, ::..._figure; test_data::test_failed_build_leaves_the_good_bank_untouched; test_config_io::test_atomic_write_keeps_old_file_when_writing_fails, ::test_atomic_dir_replaces_only_on_success | lib.io.atomic_path / atomic_dir |
| what a kill leaves half-written is cleared on the next run | test_reliability::test_leftovers_of_a_kill_are_cleared_and_a_moved_aside_folder_restored; test_data::test_leftovers_of_a_killed_build_are_cleared | lib.io.clear_leftovers (run_book, train), lib.data.build_bank |

5. Fuzzing (hypothesis)

| item | test(s) | check lives in |
|---|---|---|
| mixing reaches the requested SNR for any non-silent signal and noise | test_audio_properties::test_mixing_reaches_the_requested_snr; test_reliability::test_mixing_reaches_the_snr_over_a_window_at_any_level | lib.audio.mix_at_snr |
| normalization never gives NaN or a peak beyond the target | test_audio_properties::test_normalization_never_nan_or_above_target; test_reliability::test_rms_normalization_reaches_its_target_unless_the_peak_limits_it, ::test_nonfinite_input_never_normalizes | lib.audio.normalize |
| cutting never returns the wrong length | test_audio_properties::test_cut_never_returns_the_wrong_length, ::test_cut_from_a_short_source_always_raises; test_reliability::test_cut_length_for_any_dtype_and_start | lib.audio.cut |

6. Round 2 (issue 15): what a hostile user broke. Each test failed on the code before the fix.

| item | test(s) | check lives in |
|---|---|---|
| `predict --out` = the input manifest (exit 0, manifest gone before) | test_reliability::test_predict_refuses_an_out_that_would_destroy_something_before_any_work[the-manifest-itself] | lib.predict.check_output |
| `--out` = one of the clips | ...[a-clip] | lib.predict.check_output |
| `--out` a folder | ...[a-folder] | lib.predict.check_output |
| `--out` a character device, or a link to one (`/dev/stdout` as root became a regular file) | ...[a-character-device] | lib.predict.check_output |
| `--out` a FIFO | ...[a-fifo] | lib.predict.check_output |
| `--out` a link to an input | ...[a-link-to-the-manifest] | lib.predict.check_output |
| `--out x.parquet` wrote CSV text | ...[a-parquet-name] | lib.predict.check_output (.csv only) |
| a read-only or forbidden output folder failed after all the scoring | test_reliability::test_predict_checks_that_it_can_write_before_scoring | lib.predict._check_writable (a real temporary file) |
| a replaced output lost its permissions; a link output became a file | test_reliability::test_a_replaced_output_keeps_its_permissions_and_a_link_stays_a_link | lib.io.atomic_path (mode copied); lib.predict.check_output (writes the link's target) |
| `--run-id ../../../x`, `/abs/path`, `.`, `..`, `a/b`, `.hidden` wrote outside results/<profile>/ | test_reliability::test_run_ids_that_leave_their_folder_are_refused[*] | lib.config.check_name via lib.results.run_dir_for |
| `--profile ../profiles/ci` (and other paths) accepted as a profile | test_reliability::test_profile_names_that_leave_the_profiles_folder_are_refused | lib.config._read_profile_file, check_name |
| the start-up clean-up deleted `.thesis.tex.swpfile1.tmp`, renamed `.backup.old.2023`, could follow links | test_reliability::test_the_clean_up_removes_only_names_the_atomic_writer_made; test_reliability::test_leftovers_of_a_kill_are_cleared_and_a_moved_aside_folder_restored | lib.io (MARKER in every temporary name, is_leftover, clear_leftovers walks without following links) |
| figures shared by every run: a chapter's figures go to its run and say which run drew them | test_reliability::test_a_chapters_figures_go_to_its_run_folder_and_say_which_run | lib.book.setup_chapter (cfg['figures_dir']), lib.io.save_figure (stamp + metadata) |
| sweep members overwrote the main run's figures; figures/ gets the main run's when it completes | test_reliability::test_sweep_members_never_overwrite_the_main_runs_figures (slow) | lib.book.publish_run_figures, lib.book.run_sweep (publish_figures=False) |
| a LoRA system heard only the first 30 s of a clip | test_reliability::test_long_clips_are_scored_in_windows_not_cut_at_30_s | lib.model.split_long_clips / score_long_clips (LoraScorer.score) |
| ... and the output says how a long clip was scored | test_reliability::test_predict_says_how_it_scored_a_long_clip | lib.predict (variant, log) |
| two `book` commands on one run id both ran; a second one ended in a RuntimeError traceback | test_reliability::test_a_busy_run_is_refused_cleanly_and_a_dead_runner_never_reads_as_running | lib.book.run_book (filelock lock), RunBusy, lib.__main__ |
| a status.json whose pid was reused read 'running' for ever | test_reliability::test_a_busy_run_is_refused_cleanly_and_a_dead_runner_never_reads_as_running | lib.book.read_status / is_locked |
| `book --chapters 05` on an unfinished run marked it complete and dropped the running sweep | test_reliability::test_a_partial_chapters_run_never_marks_an_unfinished_run_complete (slow) | lib.book (status 'plan', missing_steps) |
| continuing a run with another DATA_DIR rewrote params.yaml's corpus checksum (refused now) | test_reliability::test_continuing_a_run_on_another_corpus_is_refused | lib.book.check_corpus (run_book, ensure_bank, setup_chapter) |
| exploring in JupyterLab rewrote a complete run; a relative run_dir made notebooks/results; run_dir=None trained silently | test_reliability::test_exploring_never_rewrites_a_complete_run_nor_starts_one_silently | lib.book.setup_chapter (rewrite=, new_run=, project-root paths, _last_timings) |
| truncated, empty or random-bytes adapter safetensors | test_reliability::test_a_damaged_adapter_is_named_with_what_to_do[truncated-weights, empty-weights, random-weights] | lib.model.check_adapter_files |
| empty or invalid adapter_config.json | test_reliability::test_a_damaged_adapter_is_named_with_what_to_do[empty-config, invalid-config] | lib.model.check_adapter_files |
| empty or invalid system.yaml | test_reliability::test_a_damaged_system_yaml_is_named[*] | lib.systems.read_system_yaml |
| a truncated fitted baseline (was model.joblib) | test_reliability::test_a_truncated_fitted_baseline_is_named | lib.baselines.load_fitted_state (sha256, skops errors) |
| a half-written tiny (or any local) base model: 'delete it to rebuild' | test_reliability::test_a_half_written_base_model_says_delete_it_to_rebuild | lib.model.ensure_tiny_model / check_weights, load_model (_damaged_model) |
| a symbolic link loop as a clip | test_reliability::test_a_clip_path_that_is_no_file_says_what_it_is[a-link-loop] | lib.predict.read_clip_manifest; lib.audio.load_audio |
| a symbolic link loop as `--audio-root` | test_reliability::test_an_audio_root_that_is_a_link_loop_is_named | lib.predict._resolve_root |
| `--manifest` a folder | test_reliability::test_a_bad_manifest_is_named_by_file_and_line[a-folder] | lib.predict.read_clip_manifest |
| a 0-byte manifest | ...[zero-bytes] | lib.predict._read_rows |
| ragged rows | ...[ragged-row] | lib.predict._read_rows |
| a Latin-1 manifest | ...[latin-1] | lib.predict._read_rows |
| wrong row numbers with blank lines | ...[blank-lines] | lib.predict._read_rows (file lines) |
| wrong row numbers with multi-line quoted fields | ...[multi-line-field] | lib.predict._read_rows (file lines) |
| a folder named x.wav reported as 'not found' | test_reliability::test_a_clip_path_that_is_no_file_says_what_it_is[a-folder-named-wav] | lib.predict._not_a_clip; lib.audio.load_audio |
| a FIFO reported as 'not found' | ...[a-fifo] | lib.predict._not_a_clip; lib.audio.load_audio |
| stereo that cancels to silence reported as 'all-silent (peak 0)' | test_reliability::test_stereo_that_cancels_to_silence_is_named_as_such | lib.audio.load_audio |
| samples at 3e38: 'p_speech has 1 NaN values', no clip named, after all the work | test_reliability::test_a_clip_that_a_system_cannot_score_is_named_at_once | lib.predict (per batch; one clip at a time when a system raises) |
| `--batch-size 0` | test_reliability::test_predict_batch_size_must_be_positive | lib.__main__._positive_int; lib.predict |
| `--set seed=abc` failed only in chapter 03 | test_reliability::test_every_parameter_is_type_checked_at_start_up[seed=abc] | lib.config.check_type (resolve, every profile) |
| `--set bank_seed=1.5` silently 1 | ...[bank_seed=1.5] | lib.config.check_type |
| `--set bandlimit_augment=maybe` silently True | ...[bandlimit_augment=maybe] | lib.config.check_type |
| list items of the wrong type; a value that is not YAML | ...[snrs_db=[0, loud]], ...[prompt=[] | lib.config.check_type, parse_override |
| a truncated status.json made a run impossible to resume | test_reliability::test_a_damaged_params_or_status_file_is_named_not_a_traceback; test_reliability::test_a_partial_chapters_run_never_marks_an_unfinished_run_complete (resumes it) | lib.book.read_status ('damaged'), run_book |
| an empty params.yaml (status, rerun: tracebacks) | test_reliability::test_a_damaged_params_or_status_file_is_named_not_a_traceback | lib.book.read_params; lib.__main__ (status, rerun) |
| `predict` on a manifest without a label column | test_reliability::test_predict_scores_unlabelled_clips | lib.predict.read_clip_manifest; lib.results.predictions_frame(allow_unlabelled) |
| `--on-error skip|stop` for unreadable clips | test_reliability::test_on_error_skip_writes_the_rest_and_lists_the_failures | lib.predict.predict_report |
| out-of-range float audio (x1000) warned, naming the clip | test_reliability::test_out_of_range_float_audio_gets_a_warning_naming_the_clip | lib.predict._load_clip |
| fitted baselines saved as pickles ran code when loaded | test_reliability::test_fitted_baselines_are_saved_in_a_format_that_cannot_run_code | lib.baselines.save_fitted_state / load_fitted_state (skops, trusted types, sha256; pickles refused) |
| a system.yaml `file:` outside its system folder | test_reliability::test_a_system_yaml_file_outside_its_folder_is_refused | lib.systems.system_file |
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from _notebooks import fake_chapter
from lib import audio, book, config, data, io, predict, results
from lib.audio import AudioError

LIB = config.PROJECT_ROOT / "lib"
SR = audio.SR


def _tone(n: int = 1600, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * 440 * np.arange(n) / SR)).astype(np.float32)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ================================================================================== 1. bad input

# case -> (how to make the file, what the message must say beyond the file's name); every message must
# also say what to do (REMEDY)
REMEDY = r"re-download|re-export|Convert it|check the path|drop its row"


def _write(path: Path, x, subtype="FLOAT", sr=SR) -> Path:
    sf.write(str(path), np.asarray(x), sr, subtype=subtype)
    return path


def _truncate(path: Path) -> Path:
    data_ = path.read_bytes()
    path.write_bytes(data_[: len(data_) // 2])
    return path


def _garble(path: Path) -> Path:
    raw = bytearray(path.read_bytes())
    raw[200:4000] = bytes(np.random.default_rng(0).integers(0, 256, 3800, dtype=np.uint8))
    path.write_bytes(bytes(raw))
    return path


def _put(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _with(value: float) -> np.ndarray:
    x = _tone()
    x[7] = value
    return x


BAD_AUDIO = {
    "missing": (lambda d: d / "nothere.wav", r"not found"),
    "empty-file": (lambda d: _put(d / "empty.flac", b""), r"empty \(0 bytes\)"),
    "zero-samples": (lambda d: _write(d / "zero.wav", np.zeros(0, np.float32)), r"no samples"),
    "text-as-wav": (lambda d: _put(d / "notes.wav", b"not audio\n" * 50), r"not WAV|corrupt"),
    "m4a": (lambda d: _put(d / "clip.m4a", b"\0\0\0 ftypM4A " + b"\0" * 64), r"unsupported audio format"),
    "truncated-wav": (lambda d: _truncate(_write(d / "cut.wav", _tone(16000), "PCM_16")), r"truncated"),
    "truncated-flac": (lambda d: _truncate(_write(d / "cut.flac", np.random.default_rng(1).standard_normal(16000) * 0.1, "PCM_16")), r"truncated"),
    "corrupt-flac": (lambda d: _garble(_write(d / "garbled.flac", np.random.default_rng(2).standard_normal(16000) * 0.1, "PCM_16")), r"corrupt|truncated|cannot"),
    "nan": (lambda d: _write(d / "nan.wav", _with(np.nan)), r"NaN or infinite"),
    "inf": (lambda d: _write(d / "inf.wav", _with(np.inf)), r"NaN or infinite"),
}


@pytest.mark.parametrize("case", list(BAD_AUDIO))
def test_bad_audio_names_the_file_and_says_what_to_do(tmp_path, case):
    make, what = BAD_AUDIO[case]
    path = make(tmp_path)
    with pytest.raises(AudioError) as err:
        audio.load_audio(path)
    text = str(err.value)
    assert path.name in text, text
    assert re.search(what, text), text
    assert re.search(REMEDY, text), f"the message does not say what to do: {text}"


def _user_manifest(tmp_path: Path, rows: list[dict]) -> tuple[Path, Path]:
    root = tmp_path / "clips"
    root.mkdir(exist_ok=True)
    manifest = tmp_path / "clips.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest, root


@pytest.mark.parametrize("bad,expect", [
    (np.zeros(1600, np.float32), r"line 3: clip .*b\.wav is all-silent.*normalization='none'"),
    (_with(np.inf), r"line 3: audio file .*b\.wav has 1 NaN or infinite"),
])
def test_predict_names_the_row_of_an_unusable_clip_and_keeps_the_old_output(tmp_path, bad, expect):
    manifest, root = _user_manifest(tmp_path, [{"path": "a.wav", "label": "speech"}, {"path": "b.wav", "label": "nonspeech"}])
    _write(root / "a.wav", _tone())
    _write(root / "b.wav", bad)
    out = tmp_path / "out.csv"
    out.write_text("the last good predictions\n")
    with pytest.raises(ValueError, match=expect):
        predict.predict_manifest("webrtc", manifest, root, out, normalization="rms")
    assert out.read_text() == "the last good predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips", "clips.csv", "out.csv"]  # no temporary left


def test_predict_lists_missing_files_by_row_before_loading_a_system(tmp_path, monkeypatch):
    from lib import systems

    manifest, root = _user_manifest(tmp_path, [{"path": f"{c}.wav", "label": "speech"} for c in "abc"])
    _write(root / "b.wav", _tone())
    monkeypatch.setattr(systems, "load_system", lambda *a, **k: pytest.fail("a system was loaded for a broken manifest"))
    with pytest.raises(FileNotFoundError, match=r"2 audio file\(s\) not usable .*line 2 \('a\.wav': not found\), line 4 \('c\.wav': not found\); fix the paths"):
        predict.predict_manifest("webrtc", manifest, root, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()
    # the command line says the same and exits 2
    from lib.__main__ import main

    code = main(["predict", "--system", "webrtc", "--manifest", str(manifest), "--audio-root", str(root), "--out", str(tmp_path / "o.csv")])
    assert code == 2 and not (tmp_path / "o.csv").exists()


def _fake_bank(folder: Path, paths: list[str], clip_ids: list[str] | None = None) -> Path:
    rows = []
    for i, p in enumerate(paths):
        rows.append({"clip_id": (clip_ids or [f"c{j}" for j in range(len(paths))])[i], "source_id": f"s{i}", "group_id": f"g{i}",
                     "label": "speech", "category": "speech", "split": "train", "duration_ms": 100, "snr_db": 0.0,
                     "noise_type": "white", "rt60_s": 0.0, "filter": "none", "seed": i, "path": p})
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def test_bank_manifest_duplicated_ids_say_what_to_do(tmp_path):
    m = _fake_bank(tmp_path / "bank", ["audio/a.wav", "audio/b.wav"], clip_ids=["c1", "c1"])
    with pytest.raises(data.ManifestError, match=r"bank manifest .*manifest\.csv: duplicated clip_id\(s\) \['c1'\].*rebuild the bank"):
        data.load_bank(m, check_files=False)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_paths_escaping_the_root_are_refused_before_any_read(tmp_path, monkeypatch, kind):
    secret = _write(tmp_path / "secret.wav", _tone())
    bank = tmp_path / "bank"
    (bank / "audio").mkdir(parents=True)
    _write(bank / "audio" / "ok.wav", _tone())
    if kind == "symlink":  # a link inside the root that leads out of it
        (bank / "audio" / "link.wav").symlink_to(secret)
        bad = "audio/link.wav"
    else:
        bad = "../secret.wav" if kind == "dotdot" else str(secret)
    reads: list[str] = []
    real_info, real_read = sf.info, sf.read
    monkeypatch.setattr(sf, "info", lambda p, *a, **k: reads.append(str(p)) or real_info(p, *a, **k))
    monkeypatch.setattr(sf, "read", lambda p, *a, **k: reads.append(str(p)) or real_read(p, *a, **k))

    m = _fake_bank(bank, ["audio/ok.wav", bad])
    with pytest.raises(data.ManifestError, match=r"bank manifest .*(outside the audio root|must be a path relative)"):
        data.load_bank(m)
    manifest, _ = _user_manifest(tmp_path, [{"path": "audio/ok.wav", "label": "speech"}, {"path": bad, "label": "speech"}])
    with pytest.raises(ValueError, match=r"line 3: path .* points outside the audio root .*; refused"):
        predict.predict_manifest("webrtc", manifest, bank, tmp_path / "out.csv")
    assert reads == [], f"files were read although the manifest was refused: {reads}"
    assert not (tmp_path / "out.csv").exists()


def test_empty_split_is_named():
    df = pd.DataFrame({"split": ["train", "train", "dev", "dev"], "label": ["speech", "nonspeech"] * 2, "group_id": list("abcd")})
    with pytest.raises(ValueError, match=r"bank: split 'test' is empty; use more source groups or other split_fractions"):
        data.check_splits(df, "bank")
    from lib import train as T

    with pytest.raises(ValueError, match=r"training split is empty.*check the bank's train split"):
        T.train(None, None, [], [], T.profile_recipe("cpu"), "/nonexistent")


def test_typos_on_the_command_line_and_in_chapters_list_valid_names(tmp_path, capsys):
    from lib import train as T
    from lib.__main__ import main

    res = tmp_path / "results"
    assert main(["book", "--set", "sed=1", "--run-id", "x", "--results-dir", str(res)]) == 2
    assert re.search(r"unknown parameter 'sed' \(did you mean seed.*\); valid parameters: .*seed", capsys.readouterr().err)
    assert main(["book", "--profile", "cpuu", "--run-id", "x", "--results-dir", str(res)]) == 2
    assert re.search(r"unknown profile 'cpuu'; valid profiles: .*\bcpu\b.*\bfull\b", capsys.readouterr().err)
    assert not res.exists()  # nothing written for a refused command
    with pytest.raises(config.ConfigError, match=r"unknown parameter 'lora_varient' \(did you mean lora_variant\b.*valid parameters: .*lora_variant"):
        book.setup_chapter("cpu", tmp_path / "run", lora_varient="attn")  # a chapter's own parameter
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"unknown training parameter\(s\) \['epoch'\]; valid: .*epochs"):
        config.section(config.resolve("cpu"), T.TrainConfig, epoch=1)
    with pytest.raises(ValueError, match=r"lora_variant 'qkv' unknown; valid: attn, attn_mlp"):
        config.section(config.resolve("cpu", lora_variant="qkv"), T.TrainConfig)


def test_checkpoint_and_adapter_mismatch_messages_say_what_to_do(tmp_path):
    from lib import model as M
    from lib import train as T

    where = tmp_path / "run" / "training" / "s" / "checkpoints"
    saved = {"lora_variant": "attn", "base_model": {"model_name_or_path": "tiny", "config_sha256": "1"}, "seed": 0}
    T.check_fingerprint(saved, dict(saved), where)  # the same run: accepted
    for change in ({"lora_variant": "attn_mlp"}, {"base_model": {"model_name_or_path": "Qwen/Qwen2-Audio-7B-Instruct", "config_sha256": "2"}}):
        with pytest.raises(T.CheckpointMismatchError) as err:
            T.check_fingerprint(saved, {**saved, **change}, where)
        text = str(err.value)
        key = next(iter(change))
        assert str(where) in text and f"{key}: checkpoint" in text and "delete" in text and "another run folder" in text, text
    expected = {"model_name_or_path": "tiny", "config_sha256": "a", "weights_sha256": {"model.safetensors": "1"}}
    with pytest.raises(M.AdapterMismatchError) as err:
        M.check_base_model(expected, {**expected, "model_name_or_path": "/elsewhere", "weights_sha256": {"model.safetensors": "2"}},
                           what="adapter results/cpu/book/systems/s/adapter")
    text = str(err.value)
    assert "results/cpu/book/systems/s/adapter" in text and "weights_sha256" in text and "'tiny'" in text
    assert "load it on the base model it was trained on" in text and "train it again" in text
    (tmp_path / "not-an-adapter").mkdir()
    with pytest.raises(FileNotFoundError, match=r"not-an-adapter holds no adapter_config\.json: not a saved adapter"):
        M.load_adapter(None, tmp_path / "not-an-adapter")


# ============================================================================ 2. interrupted runs

PARAMS = 'profile = "cpu"\nrun_dir = None\nseed = None\n'


def _chapter(folder: Path, name: str, body: str) -> Path:
    return fake_chapter(folder, name, body, PARAMS)


# A chapter that writes predictions (40 clips, seeded p_speech); with the flag file present it writes a
# big table again and again (through the writer write_predictions ends with), so that a kill can be aimed
# at the middle of a write.
PREDICTIONS_CHAPTER = """
import pathlib, time
import numpy as np
import lib.book, lib.io, lib.results
cfg = lib.book.setup_chapter(profile, run_dir, seed=seed)
def table(n):
    p = np.random.default_rng(cfg["seed"]).random(n)
    return lib.results.predictions_frame(run_id=cfg["run_id"], system="coin", seed=cfg["seed"],
        clip_ids=[f"c{{i:06d}}" for i in range(n)], labels=["speech", "nonspeech"] * (n // 2), p_speech=p)
flag = pathlib.Path({flag!r})
if flag.exists():
    big = table(200_000)
    while True:
        lib.io.write_csv(pathlib.Path(cfg["run_dir"], "predictions.csv"), big)
lib.results.write_predictions(cfg["run_dir"], table(40))
"""

MARK_CHAPTER = """
import pathlib
import lib.book
cfg = lib.book.setup_chapter(profile, run_dir, seed=seed)
pathlib.Path(cfg["run_dir"], "01.mark").write_text(str(cfg["seed"]))
"""

METRICS_CHAPTER = """
import pathlib
import lib.book, lib.io, lib.results, lib.stats
cfg = lib.book.setup_chapter(profile, run_dir, seed=seed)
pred = lib.results.read_predictions(cfg["run_dir"])
pred["group_id"] = "g" + (pred["clip_id"].str[1:].astype(int) // 4).astype(str)
lib.io.write_json(pathlib.Path(cfg["run_dir"], "metrics.json"), lib.stats.metrics_json(pred, n_boot=200, seed=0, smoke=True))
"""


def _filling(folder: Path, pattern: str) -> bool:
    """Whether a temporary file matching ``pattern`` exists and has begun to fill (it may vanish meanwhile)."""
    for p in folder.glob(pattern):
        try:
            if p.stat().st_size > 0:
                return True
        except FileNotFoundError:
            pass
    return False


@pytest.mark.slow
def test_killed_rerun_leaves_the_last_good_results_and_a_rerun_finishes(tmp_path):
    nbs, res, flag = tmp_path / "notebooks", tmp_path / "results", tmp_path / "slow"
    nbs.mkdir()
    _chapter(nbs, "01_first", MARK_CHAPTER)
    _chapter(nbs, "02_predictions", PREDICTIONS_CHAPTER.format(flag=str(flag)))
    cmd = [sys.executable, "-m", "lib", "book", "--run-id", "k", "--results-dir", str(res), "--notebooks-dir", str(nbs),
           "--set", "sweep_seeds=[]", "--set", "seed=4"]
    first = subprocess.run(cmd, cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    run = res / "cpu" / "k"
    good = {name: (run / name).read_bytes() for name in ("02_predictions.ipynb", "predictions.csv")}

    # The same command on the complete run runs it again; kill it while chapter 02 is writing.
    flag.write_text("x")
    proc = subprocess.Popen(cmd, cwd=config.PROJECT_ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        # aim at the middle of a write: its temporary file exists and has begun to fill
        while not _filling(run, ".predictions.csv.speechbook-*.tmp.csv"):
            assert proc.poll() is None, "the runner ended before it could be killed"
            assert time.monotonic() < deadline, "chapter 02 never started writing"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its kernel, no chance to clean up
    finally:
        proc.wait()
    status = book.read_status(run)
    assert status["state"] == "incomplete" and status["chapters"]["01_first"]["state"] == "done"
    assert (run / "02_predictions.ipynb").read_bytes() == good["02_predictions.ipynb"]  # the last good executed chapter
    now = (run / "predictions.csv").read_bytes()
    if now != good["predictions.csv"]:  # a complete newer table is fine; a half-written one is not
        assert len(results.read_predictions(run)) == 200_000

    flag.unlink()
    again = subprocess.run(cmd, cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "01_first: already done" in again.stdout
    assert book.read_status(run)["state"] == "complete"
    assert (run / "predictions.csv").read_bytes() == good["predictions.csv"]  # same seed, same table
    leftovers = [p for p in run.rglob(".*") if re.search(r"\.tmp|\.old\.", p.name)]
    assert not leftovers, f"the rerun left what the kill half-wrote: {leftovers}"


# ============================================================================ 3. reproducibility


def test_a_freshly_loaded_model_scores_identically():
    from lib import model as M

    rng = np.random.default_rng(5)
    clips = [(0.1 * rng.standard_normal(int(n))).astype(np.float32) for n in rng.integers(800, 8000, 6)]
    first = M.score(*M.load_model("tiny"), clips, batch_size=4)
    second = M.score(*M.load_model("tiny"), clips, batch_size=4)
    assert np.array_equal(first.logits, second.logits) and np.array_equal(first.p_speech, second.p_speech)


def _predictions(seed: int, n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = ["speech", "nonspeech"] * (n // 2)
    df = results.predictions_frame(run_id="r", system="s", clip_ids=[f"c{i:03d}" for i in range(n)], labels=labels,
                                   p_speech=np.clip(rng.normal(np.where(np.array(labels) == "speech", 0.65, 0.35), 0.2), 0, 1))
    df["group_id"] = [f"g{i // 3}" for i in range(n)]
    return df


def test_metrics_json_is_identical_on_identical_predictions():
    from lib import stats

    a = stats.metrics_json(_predictions(1), n_boot=300, seed=0)
    b = stats.metrics_json(_predictions(1), n_boot=300, seed=0)
    shuffled = stats.metrics_json(_predictions(1).sample(frac=1, random_state=3), n_boot=300, seed=0)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) == json.dumps(shuffled, sort_keys=True)
    other_seed = stats.metrics_json(_predictions(1), n_boot=300, seed=1)
    assert json.dumps(other_seed["systems"]) != json.dumps(a["systems"])  # the bootstrap seed matters, so it is fixed


def test_run_folder_records_its_provenance(tmp_path):
    from importlib import metadata

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest.csv").write_text("path,label,category\na.flac,speech,speech\n")
    cfg = config.resolve("cpu", data_dir=str(corpus), seed=9)
    book.write_params(tmp_path / "run", "cpu", {"data_dir": str(corpus), "seed": 9}, cfg)
    params = yaml.safe_load((tmp_path / "run" / "params.yaml").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=config.PROJECT_ROOT, capture_output=True, text=True).stdout.strip()
    assert params["git"]["commit"] == head and isinstance(params["git"]["dirty"], bool)
    assert params["corpus_manifest_sha256"] == hashlib.sha256((corpus / "manifest.csv").read_bytes()).hexdigest()
    assert params["packages"]["torch"] == metadata.version("torch") and params["packages"]["transformers"] == metadata.version("transformers")
    assert params["overrides"] == {"data_dir": str(corpus), "seed": 9} and params["resolved"]["seed"] == 9
    assert params["profile"] == "cpu" and params["python"] == sys.version.split()[0]


def _without_run_id(obj):
    if isinstance(obj, dict):
        return {k: _without_run_id(v) for k, v in obj.items() if k != "run_id"}
    if isinstance(obj, list):
        return [_without_run_id(v) for v in obj]
    return obj


@pytest.mark.slow
def test_rerun_from_the_folder_alone_gives_the_same_outputs(tmp_path):
    nbs, res = tmp_path / "notebooks", tmp_path / "results"
    nbs.mkdir()
    _chapter(nbs, "01_predictions", PREDICTIONS_CHAPTER.format(flag=str(tmp_path / "never")))
    _chapter(nbs, "02_metrics", METRICS_CHAPTER)
    overrides = {"seed": 7, "sweep_seeds": []}
    book.run_book("cpu", overrides, run_id="orig", results_dir=res, notebooks_dir=nbs, log=lambda s: None)
    orig = res / "cpu" / "orig"

    out = subprocess.run([sys.executable, "-m", "lib", "rerun", str(orig), "--run-id", "again", "--notebooks-dir", str(nbs)],
                         cwd=config.PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    again = res / "cpu" / "again"
    assert book.read_status(again)["state"] == "complete" and list(book.read_status(again)["chapters"]) == ["01_predictions", "02_metrics"]
    p_orig, p_again = book.read_params(orig), book.read_params(again)
    assert p_again["overrides"] == p_orig["overrides"] == overrides and p_again["profile"] == "cpu"
    a, b = results.read_predictions(orig), results.read_predictions(again)
    assert set(a["run_id"]) == {"orig"} and set(b["run_id"]) == {"again"}
    pd.testing.assert_frame_equal(a.drop(columns="run_id"), b.drop(columns="run_id"))
    m_orig = json.loads((orig / "metrics.json").read_text())
    m_again = json.loads((again / "metrics.json").read_text())
    assert _without_run_id(m_orig) == _without_run_id(m_again) and m_orig["smoke"] is True


# ============================================================================= 4. atomic writes

# Writers that put bytes on disk. A call is atomic when it sits inside ``with io.atomic_path(...)`` /
# ``io.atomic_dir(...)``, writes to an in-memory buffer, or is a function only ever called inside one.
ATTR_WRITERS = {"to_csv", "to_parquet", "to_json", "to_pickle", "savefig", "save_pretrained", "save_file", "write_text",
                "write_bytes", "extractall", "copytree", "copyfile"}
MODULE_WRITERS = {("torch", "save"), ("np", "save"), ("numpy", "save"), ("np", "savez"), ("json", "dump"), ("yaml", "dump"),
                  ("yaml", "safe_dump"), ("joblib", "dump"), ("pickle", "dump"), ("wavfile", "write"), ("sf", "write"),
                  ("soundfile", "write"), ("shutil", "copy"), ("shutil", "copy2"), ("shutil", "move")}
ALLOWED = {
    ("data/bank.py", "_lock"): "an flock lock file; it holds no data",
    ("data/downloads.py", "download"): "streams into <file>.part (resumable), verifies its sha256, then os.replace",
    ("parallel.py", "_quiet_worker"): "opens os.devnull for a worker's output; writes no file",
    ("book/runner.py", "_sweep_beside_book"): "appends the background sweep's log lines (a log, not a result)",
}


def _name(node) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def _scan(path: Path) -> tuple[list[tuple[str, int, str]], dict[str, list[bool]]]:
    """(unprotected writes as (function, line, writer), {called function name: [inside an atomic block?]})."""
    writes: list[tuple[str, int, str]] = []
    calls: dict[str, list[bool]] = {}

    def visit(node, atomic: bool, func: str) -> None:
        if isinstance(node, (ast.With, ast.AsyncWith)) and any(
                isinstance(i.context_expr, ast.Call) and _name(i.context_expr.func) in ("atomic_path", "atomic_dir") for i in node.items):
            atomic = True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name
        if isinstance(node, ast.Call):
            f, hit = node.func, None
            if isinstance(f, ast.Attribute):
                receiver = _name(f.value)
                if (receiver, f.attr) in MODULE_WRITERS:  # yaml.dump without a stream only returns a string
                    to_file = receiver != "yaml" or len(node.args) > 1 or any(k.arg == "stream" for k in node.keywords)
                    hit = f"{receiver}.{f.attr}" if to_file else None
                elif f.attr in ATTR_WRITERS and receiver != "io":  # lib.io's own write_text etc. are atomic
                    hit = f".{f.attr}"
            elif isinstance(f, ast.Name) and f.id == "open":
                mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
                if mode is not None and not (isinstance(mode, ast.Constant) and not set(str(mode.value)) & set("wax+")):
                    hit = "open"
            first = node.args[0] if node.args else None
            if hit and not atomic and "buf" not in (_name(first) or ""):
                writes.append((func, node.lineno, hit))
            if _name(f):
                calls.setdefault(_name(f), []).append(atomic)
        for child in ast.iter_child_nodes(node):
            visit(child, atomic, func)

    visit(ast.parse(path.read_text()), False, "<module>")
    return writes, calls


def test_every_writer_in_lib_is_atomic():
    scans = {p.relative_to(LIB).as_posix(): _scan(p) for p in sorted(LIB.rglob("*.py")) if p.relative_to(LIB).as_posix() != "io.py"}
    calls: dict[str, list[bool]] = {}
    for _, c in scans.values():
        for name, flags in c.items():
            calls.setdefault(name, []).extend(flags)
    offenders = []
    for file, (writes, _) in scans.items():
        for func, line, writer in writes:
            if (file, func) in ALLOWED:
                continue
            if calls.get(func) and all(calls[func]):  # a helper only ever called inside an atomic block
                continue
            offenders.append(f"lib/{file}:{line} {writer} in {func}()")
    assert not offenders, ("writes that bypass lib.io (use io.write_csv/json/yaml/text, io.save_figure, or write inside "
                           "io.atomic_path / io.atomic_dir):\n" + "\n".join(offenders))


def test_the_writer_audit_catches_a_plain_write(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pandas as pd\nfrom lib import io\ndef f(df, p, fig):\n    df.to_csv(p)\n"
                   "    with io.atomic_path(p) as t:\n        fig.savefig(t)\n    io.write_text(p, 'x')\n")
    writes, _ = _scan(bad)
    assert [(w[0], w[2]) for w in writes] == [("f", ".to_csv")]


class DiskFull(OSError):
    pass


def _half_then_fail(target) -> None:
    """What a crash mid-write does: a few bytes reach the target, then the writer fails."""
    Path(target).write_bytes(b"half a fi")
    raise DiskFull(f"no space left while writing {target}")


def test_failed_write_keeps_the_old_predictions(tmp_path, monkeypatch):
    results.write_predictions(tmp_path, _predictions(1).drop(columns="group_id"))
    before = _files(tmp_path)
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda self, path, **kw: _half_then_fail(path))
    with pytest.raises(DiskFull):
        results.write_predictions(tmp_path, _predictions(2, n=10).assign(system="other").drop(columns="group_id"))
    assert _files(tmp_path) == before  # the old table, byte for byte, and no temporary left


def test_failed_write_keeps_the_old_bank(synthetic_corpus, tmp_path, monkeypatch):
    cfg = config.resolve("cpu", data_dir=str(synthetic_corpus), bank_dir=str(tmp_path), durations_ms=[50], snrs_db=[0],
                         noise_types=["white"], clips_per_cell=3, max_sources_per_class=8, bandlimit_augment=False)
    manifest = data.build_bank(cfg, progress=False)
    before = _files(tmp_path)
    real = io.write_csv
    monkeypatch.setattr(io, "write_csv", lambda path, df, **kw: (
        _half_then_fail(path) if Path(path).name == "manifest.csv" else real(path, df, **kw)))
    with pytest.raises(DiskFull):
        data.build_bank(cfg, force=True, progress=False)
    assert _files(tmp_path) == before
    assert len(data.load_bank(manifest)) == 3 * 2


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    import torch

    from lib import train as T

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    T.save_checkpoint(tmp_path, {"step": 1, "epoch": 0, "micro": 1}, model, opt, sched)
    before = _files(tmp_path)
    real = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (
        _half_then_fail(f) if Path(f).name == "scheduler.pt" else real(obj, f, *a, **k)))
    with pytest.raises(DiskFull):
        T.save_checkpoint(tmp_path, {"step": 2, "epoch": 0, "micro": 2}, model, opt, sched)
    assert _files(tmp_path) == before and [p.name for p in tmp_path.iterdir()] == ["step-0000001"]
    assert T.latest_checkpoint(tmp_path).name == "step-0000001"
    monkeypatch.undo()
    assert T.load_checkpoint(tmp_path / "step-0000001", model, opt, sched)["step"] == 1


def test_failed_write_keeps_the_old_figure(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    io.save_figure(fig, tmp_path / "fig")
    before = _files(tmp_path)
    monkeypatch.setattr(fig, "savefig", lambda target, **kw: _half_then_fail(target))
    with pytest.raises(DiskFull):
        io.save_figure(fig, tmp_path / "fig")
    plt.close(fig)
    assert _files(tmp_path) == before and sorted(before) == ["fig.pdf", "fig.png"]


def test_leftovers_of_a_kill_are_cleared_and_a_moved_aside_folder_restored(tmp_path):
    run = tmp_path / "run"
    (run / "training" / "s" / "checkpoints" / "step-0000002").mkdir(parents=True)
    (run / "predictions.csv").write_text("good")
    # what a SIGKILL mid-write leaves: a temporary file, a temporary folder, and (between atomic_dir's two
    # renames) a last good folder moved aside with nothing in its place
    (run / ".predictions.csv.speechbook-abcd1234.tmp.csv").write_text("ha")
    (run / "training" / "s" / "checkpoints" / ".step-0000003.speechbook-x1y2z3_4.tmp").mkdir()
    (run / "systems" / ".adapter.old.speechbook-4242").mkdir(parents=True)
    (run / "systems" / ".adapter.old.speechbook-4242" / "adapter_model.safetensors").write_text("last good adapter")
    (run / ".02_training.running.ipynb").write_text("{}")  # papermill's partial copy: replaced by the next run
    cleared = io.clear_leftovers(run)
    assert len(cleared) == 3
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == [
        ".02_training.running.ipynb", "predictions.csv", "systems", "systems/adapter", "systems/adapter/adapter_model.safetensors",
        "training", "training/s", "training/s/checkpoints", "training/s/checkpoints/step-0000002"]
    # the writers really use that marker
    with io.atomic_path(run / "x.csv") as tmp:
        assert io.is_leftover(tmp.name) and tmp.name.startswith(".x.csv.speechbook-")
    assert (run / "predictions.csv").read_text() == "good"
    assert (run / "systems" / "adapter" / "adapter_model.safetensors").read_text() == "last good adapter"


# ================================================================================== 5. fuzzing

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
unit = st.floats(min_value=-1, max_value=1, allow_nan=False, width=32)


@SETTINGS
@given(data_=st.data(), snr=st.floats(-10, 20), s_exp=st.integers(-6, 3), n_exp=st.integers(-6, 3))
def test_mixing_reaches_the_snr_over_a_window_at_any_level(data_, snr, s_exp, n_exp):
    n = data_.draw(st.integers(8, 1200), label="length")
    s = data_.draw(arrays(np.float32, n, elements=unit), label="signal") * np.float32(10.0 ** s_exp)
    z = data_.draw(arrays(np.float32, n, elements=unit), label="noise") * np.float32(10.0 ** n_exp)
    a = data_.draw(st.integers(0, n - 4), label="window start")
    w = slice(a, data_.draw(st.integers(a + 4, n), label="window end"))
    assume(audio.power(s[w]) > 1e-20 and audio.power(z[w]) > 1e-20)
    mix, sc, nc = audio.mix_at_snr(s, z, snr, return_components=True, window=w)
    assert mix.dtype == np.float32 and len(mix) == n and np.isfinite(mix).all()
    assert abs(audio.snr_db(sc[w], nc[w]) - snr) < 0.01
    np.testing.assert_array_equal(sc, s)  # the signal is never rescaled


@SETTINGS
@given(x=arrays(np.float32, st.integers(2, 2000), elements=unit), exp=st.integers(-7, 3))
def test_rms_normalization_reaches_its_target_unless_the_peak_limits_it(x, exp):
    x = x * np.float32(10.0 ** exp)
    assume(np.abs(x).max() >= audio.SILENCE_PEAK * 10)
    y = audio.normalize(x, "rms")
    assert np.isfinite(y).all() and np.abs(y).max() <= np.float32(audio.TARGET_PEAK)
    x64 = x.astype(np.float64)
    crest_db = 20 * np.log10(np.abs(x64).max() / np.sqrt(np.mean(x64 ** 2)))
    if crest_db < 20 * np.log10(audio.TARGET_PEAK) - audio.TARGET_RMS_DBFS:  # the peak does not bind
        assert abs(audio.rms_dbfs(y) - audio.TARGET_RMS_DBFS) < 0.01
    else:
        assert np.isclose(np.abs(y).max(), audio.TARGET_PEAK, rtol=1e-5)


@SETTINGS
@given(x=arrays(np.float32, st.integers(1, 500), elements=unit), where=st.floats(0, 1),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]), mode=st.sampled_from(audio.NORMALIZATIONS))
def test_nonfinite_input_never_normalizes(x, where, bad, mode):
    x = x.copy()
    x[int(where * (len(x) - 1))] = bad
    with pytest.raises(ValueError, match=r"clip c7 has NaN or infinite samples"):
        audio.normalize(x, mode, name="c7")


@SETTINGS
@given(ms=st.floats(20, 1000), extra=st.integers(0, 3000), frac=st.floats(0, 1),
       dtype=st.sampled_from([np.int16, np.float32, np.float64]))
def test_cut_length_for_any_dtype_and_start(ms, extra, frac, dtype):
    n = audio.n_samples(ms)
    x = (np.arange(n + extra) % 1000).astype(dtype)
    start = int(frac * extra)
    y = audio.cut(x, ms, start, name="src")
    assert len(y) == n == round(ms * SR / 1000) and y.dtype == np.float32
    assert y[0] == x[start]


def test_clips_shorter_than_one_audio_token_are_padded_so_the_model_hears_them():
    """20 ms gives zero audio tokens through Qwen2-Audio's stride and pooling; the book pads to 30 ms."""
    import numpy as np

    from lib import model as M

    assert M.n_audio_tokens(320) == 0 and M.n_audio_tokens(M.MIN_AUDIO_SAMPLES) == 1
    _, processor = M.load_model(M.TINY, device="cpu")
    inputs = M.make_inputs(processor, [np.full(320, 0.1, np.float32), np.full(16000, 0.1, np.float32)])
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    counts = (inputs["input_ids"] == audio_id).sum(dim=1).tolist()
    assert counts == [1, 25]
    clip = np.arange(100, dtype=np.float32)
    padded = M.pad_to_min_audio(clip)
    assert len(padded) == M.MIN_AUDIO_SAMPLES and np.array_equal(padded[:100], clip) and not padded[100:].any()


# ======================================================= 6. round 2 (issue 15): a hostile user's cases

def _clips(tmp_path: Path, rows: list[dict] | None = None) -> tuple[Path, Path]:
    """A user's manifest of two good clips (a.wav, b.wav) under tmp_path/clips."""
    manifest, root = _user_manifest(tmp_path, rows or [{"path": "a.wav", "label": "speech"}, {"path": "b.wav", "label": "nonspeech"}])
    _write(root / "a.wav", _tone())
    _write(root / "b.wav", _tone(amp=0.1))
    return manifest, root


def _no_system(monkeypatch) -> None:
    """Fail the test if predict gets as far as loading a system (the check must come before any work)."""
    from lib import systems

    monkeypatch.setattr(systems, "load_system", lambda *a, **k: pytest.fail("a system was loaded although the command was refused"))


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _link(path: Path, to: Path) -> Path:
    path.symlink_to(to)
    return path


# case -> (make the --out path from (tmp_path, manifest), what the message says)
BAD_OUT = {
    "the-manifest-itself": (lambda d, m: m, r"is an input of this command"),
    "a-clip": (lambda d, m: d / "clips" / "a.wav", r"must end in \.csv|is an input"),
    "a-folder": (lambda d, m: (d / "outdir.csv").mkdir() or d / "outdir.csv", r"is a folder"),
    "a-character-device": (lambda d, m: _link(d / "null.csv", Path("/dev/null")), r"not a regular file"),
    "a-fifo": (lambda d, m: _fifo(d / "pipe.csv"), r"not a regular file"),
    "a-link-to-the-manifest": (lambda d, m: _link(d / "alias.csv", m), r"is an input of this command"),
    "a-parquet-name": (lambda d, m: d / "out.parquet", r"must end in \.csv"),
}


@pytest.mark.parametrize("case", list(BAD_OUT))
def test_predict_refuses_an_out_that_would_destroy_something_before_any_work(tmp_path, monkeypatch, case):
    manifest, root = _clips(tmp_path)
    before = {p: p.read_bytes() for p in (manifest, root / "a.wav", root / "b.wav")}
    make, expect = BAD_OUT[case]
    out = make(tmp_path, manifest)
    _no_system(monkeypatch)
    with pytest.raises(ValueError, match=expect):
        predict.predict_manifest("webrtc", manifest, root, out)
    assert {p: p.read_bytes() for p in before} == before  # no input lost
    if out.is_symlink():
        assert out.is_symlink()  # still a link


def test_predict_checks_that_it_can_write_before_scoring(tmp_path, monkeypatch):
    manifest, root = _clips(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    real = predict.tempfile.mkstemp

    def no_write(*a, dir=None, **k):  # a read-only mount or a folder without write permission (as root, chmod is not enough)
        if Path(dir) == locked:
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr(predict.tempfile, "mkstemp", no_write)
    _no_system(monkeypatch)
    with pytest.raises(ValueError, match=r"cannot write in .*locked \(Permission denied\); pick a folder you can write to"):
        predict.predict_manifest("webrtc", manifest, root, locked / "out.csv")


def test_a_replaced_output_keeps_its_permissions_and_a_link_stays_a_link(tmp_path):
    manifest, root = _clips(tmp_path)
    out = tmp_path / "out.csv"
    out.write_text("old\n")
    out.chmod(0o640)
    predict.predict_manifest("webrtc", manifest, root, out)
    assert (out.stat().st_mode & 0o777) == 0o640 and len(pd.read_csv(out)) == 2
    real = tmp_path / "real.csv"
    real.write_text("old\n")
    link = _link(tmp_path / "link.csv", real)
    predict.predict_manifest("webrtc", manifest, root, link)
    assert link.is_symlink() and len(pd.read_csv(real)) == 2


@pytest.mark.parametrize("run_id", ["../../../x", "/abs/path", ".", "..", "a/b", ".hidden"])
def test_run_ids_that_leave_their_folder_are_refused(tmp_path, run_id, capsys):
    with pytest.raises(config.ConfigError, match=r"run id .* is not a valid name"):
        results.run_dir_for("cpu", run_id, tmp_path / "results")
    from lib.__main__ import main

    assert main(["book", "--run-id", run_id, "--results-dir", str(tmp_path / "results"), "--notebooks-dir", str(tmp_path)]) == 2
    assert "is not a valid name" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing made anywhere


def test_profile_names_that_leave_the_profiles_folder_are_refused(tmp_path):
    for name in ("../profiles/ci", "/etc/passwd", "ci/../cpu"):
        with pytest.raises(config.ConfigError, match=r"unknown profile"):
            config.resolve(name)
        with pytest.raises(config.ConfigError):
            results.run_dir_for(name, "book", tmp_path)


def test_the_clean_up_removes_only_names_the_atomic_writer_made(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".thesis.tex.swpfile1.tmp").write_text("a user's swap file")
    (run / ".backup.old.2023").mkdir()
    (run / ".backup.old.2023" / "notes.txt").write_text("a user's backup")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / ".x.csv.speechbook-abcd1234.tmp.csv").write_text("not ours to clear: outside the run")
    (run / "link").symlink_to(outside)  # a link out of the folder is not followed
    (run / ".p.csv.speechbook-abcd1234.tmp.csv").write_text("ours")
    cleared = io.clear_leftovers(run)
    assert [p.name for p in cleared] == [".p.csv.speechbook-abcd1234.tmp.csv"]
    assert (run / ".thesis.tex.swpfile1.tmp").exists() and (run / ".backup.old.2023" / "notes.txt").exists()
    assert not (run / "backup").exists() and (outside / ".x.csv.speechbook-abcd1234.tmp.csv").exists()


def test_a_chapters_figures_go_to_its_run_folder_and_say_which_run(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    cfg = book.setup_chapter("cpu", tmp_path / "results" / "cpu" / "r1", new_run=True, figures_dir=str(tmp_path / "figures"), log=lambda s: None)
    assert cfg["figures_dir"] == str(tmp_path / "results" / "cpu" / "r1" / "figures")
    assert cfg["book_figures_dir"] == str(tmp_path / "figures")
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    io.save_figure(fig, Path(cfg["figures_dir"]) / "05_x")
    plt.close(fig)
    assert Image.open(Path(cfg["figures_dir"]) / "05_x.png").text["Source"] == "speechbook run cpu/r1"
    assert not (tmp_path / "figures").exists()  # the project's figures/ only gets a complete whole-book run's copies


FIGURE_CHAPTER = """
import pathlib
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import lib.book, lib.io
cfg = lib.book.setup_chapter(profile, run_dir, seed=seed)
fig, ax = plt.subplots()
ax.set_title(f"seed {cfg['seed']}")
lib.io.save_figure(fig, pathlib.Path(cfg["figures_dir"]) / "05_metrics")
"""


@pytest.mark.slow
def test_sweep_members_never_overwrite_the_main_runs_figures(tmp_path):
    from PIL import Image

    nbs, res, figs = tmp_path / "notebooks", tmp_path / "results", tmp_path / "figures"
    nbs.mkdir()
    _chapter(nbs, "05_evaluation", FIGURE_CHAPTER)
    overrides = {"sweep_seeds": [], "figures_dir": str(figs)}
    book.run_book("cpu", overrides, run_id="main", results_dir=res, notebooks_dir=nbs, log=lambda s: None)
    main_png = (figs / "05_metrics.png").read_bytes()
    assert Image.open(figs / "05_metrics.png").text["Source"] == "speechbook run cpu/main"
    # a sweep member (its own run, on the main run's bank) draws the same figure with another seed
    (res / "cpu" / "main" / "bank.yaml").write_text("manifest: /nowhere/manifest.csv\nsha256: x\n")
    book.run_sweep("cpu", overrides, res / "cpu" / "main", [2], ["attn"], ["05"], log=lambda s: None, notebooks_dir=nbs)
    assert book.read_status(res / "cpu" / "main--seed2-attn")["state"] == "complete"
    assert (figs / "05_metrics.png").read_bytes() == main_png
    assert Image.open(res / "cpu" / "main--seed2-attn" / "figures" / "05_metrics.png").text["Source"] == "speechbook run cpu/main--seed2-attn"


def test_long_clips_are_scored_in_windows_not_cut_at_30_s():
    from lib import model as M

    scorer = M.zero_shot_scorer("tiny", device="cpu")
    w = scorer.window_samples
    assert w == 30 * SR
    rng = np.random.default_rng(0)
    noise = (0.05 * rng.standard_normal(w)).astype(np.float32)
    t = np.arange(w) / SR
    voice = (0.3 * np.sin(2 * np.pi * 150 * t) * np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2).astype(np.float32)
    parts = [noise, voice, np.zeros(w, np.float32)]
    alone = scorer.score(parts)
    low, high = int(np.argmin(alone)), int(np.argmax(alone))
    assert alone[low] < alone[high]
    # 30 s that score low, then 30 s that score high: the second half is heard (cut at 30 s, the clip would score as
    # its first half), and the clip's score is the maximum over its windows
    p = scorer.score([np.concatenate([parts[low], parts[high]]), np.concatenate([parts[high], parts[low]])])
    assert p[0] == pytest.approx(alone[high], abs=1e-6) and p[1] == pytest.approx(alone[high], abs=1e-6)
    assert p[0] != pytest.approx(alone[low], abs=1e-6)
    pieces, owner = M.split_long_clips([np.arange(70), np.arange(5)], 30)
    assert [(x[0], len(x)) for x in pieces] == [(0, 30), (30, 30), (40, 30), (0, 5)] and owner.tolist() == [0, 0, 0, 1]


def test_predict_says_how_it_scored_a_long_clip(tmp_path, monkeypatch):
    from lib import model as M
    from lib import systems

    manifest, root = _user_manifest(tmp_path, [{"path": "long.wav", "label": "speech"}])
    _write(root / "long.wav", np.tile(_tone(), 25 * 16))  # 40 s
    scorer = M.zero_shot_scorer("tiny", device="cpu")
    monkeypatch.setattr(systems, "load_system", lambda *a, **k: scorer)
    lines: list[str] = []
    out = predict.predict_manifest("a-lora-run", manifest, root, tmp_path / "out.csv", log=lines.append)
    variant = pd.read_csv(out)["variant"].iloc[0]
    assert "maximum over 30 s windows" in variant and any("longer than 30 s" in s for s in lines)


def test_a_busy_run_is_refused_cleanly_and_a_dead_runner_never_reads_as_running(tmp_path, capsys):
    from lib.__main__ import main

    nbs, res = tmp_path / "notebooks", tmp_path / "results"
    nbs.mkdir()
    _chapter(nbs, "01_first", MARK_CHAPTER)
    run = res / "cpu" / "busy"
    run.mkdir(parents=True)
    lock = book.run_lock(run)
    lock.acquire()
    try:  # another process holds the run (here: this one, through another lock handle)
        code = main(["book", "--run-id", "busy", "--results-dir", str(res), "--notebooks-dir", str(nbs), "--set", "sweep_seeds=[]"])
        assert code == 2
        assert re.search(r"run .*busy is being executed by another process right now", capsys.readouterr().err)
        assert not (run / "01.mark").exists()
    finally:
        lock.release()
    # a status.json that says "running" with the pid of a live python process (pid reuse) but no lock: incomplete
    io.write_json(run / "status.json", {"state": "running", "pid": os.getpid(), "chapters": {}, "params_digest": "x"})
    assert book.read_status(run)["state"] == "incomplete"


@pytest.mark.slow
def test_a_partial_chapters_run_never_marks_an_unfinished_run_complete(tmp_path):
    from lib.__main__ import main

    nbs, res = tmp_path / "notebooks", tmp_path / "results"
    nbs.mkdir()
    _chapter(nbs, "01_first", MARK_CHAPTER)
    _chapter(nbs, "06_statistics", MARK_CHAPTER)
    run = res / "cpu" / "p"
    run.mkdir(parents=True)
    digest = book.params_digest("cpu", {})
    # a whole-book run killed during its sweep: 01 done, the sweep running, 06 not reached
    io.write_json(run / "status.json", {"state": "running", "pid": 999999, "params_digest": digest, "profile": "cpu",
                                        "plan": ["01_first", "sweep", "06_statistics"],
                                        "chapters": {"01_first": {"state": "done"}, "sweep": {"state": "running"}}})
    book.run_book("cpu", {}, run_id="p", chapters=["01"], results_dir=res, notebooks_dir=nbs, log=lambda s: None, force=True)
    status = book.read_status(run)
    assert status["state"] == "incomplete" and "sweep" in status["chapters"] and "06_statistics" in status["note"]
    assert main(["status", str(run)]) == 1
    # a truncated status.json: the run still resumes (its chapters run again) instead of failing to parse
    (run / "status.json").write_text('{"state": "comp')
    assert book.read_status(run)["state"] == "damaged"
    book.run_book("cpu", {}, run_id="p", chapters=["01", "06"], results_dir=res, notebooks_dir=nbs, log=lambda s: None)
    assert book.read_status(run)["state"] == "complete"


def test_continuing_a_run_on_another_corpus_is_refused(tmp_path, monkeypatch):
    nbs, res = tmp_path / "notebooks", tmp_path / "results"
    nbs.mkdir()
    _chapter(nbs, "01_first", MARK_CHAPTER)
    corpora = {}
    for name in ("old", "new"):
        corpora[name] = tmp_path / name
        corpora[name].mkdir()
        (corpora[name] / "manifest.csv").write_text(f"path,label,category\n{name}.flac,speech,speech\n")
    monkeypatch.setenv("DATA_DIR", str(corpora["old"]))
    run = res / "cpu" / "c"
    run.mkdir(parents=True)
    book.write_params(run, "cpu", {"sweep_seeds": []}, config.resolve("cpu", sweep_seeds=[]))
    io.write_json(run / "status.json", {"state": "incomplete", "params_digest": book.params_digest("cpu", {"sweep_seeds": []}),
                                        "chapters": {}, "plan": ["01_first"]})
    (run / "bank.yaml").write_text("manifest: /somewhere/bank/manifest.csv\nsha256: x\n")
    monkeypatch.setenv("DATA_DIR", str(corpora["new"]))
    before = (run / "params.yaml").read_text()
    with pytest.raises(config.ConfigError, match=r"was made from the corpus at .*old .*but the corpus now is .*new.*start a new run"):
        book.run_book("cpu", {"sweep_seeds": []}, run_id="c", results_dir=res, notebooks_dir=nbs, log=lambda s: None)
    assert (run / "params.yaml").read_text() == before and not (run / "01.mark").exists()
    with pytest.raises(config.ConfigError, match=r"was made from the corpus"):
        book.ensure_bank({**config.resolve("cpu"), "run_dir": str(run)})


def test_exploring_never_rewrites_a_complete_run_nor_starts_one_silently(tmp_path, monkeypatch):
    run = tmp_path / "results" / "cpu" / "done"
    run.mkdir(parents=True)
    book.write_params(run, "cpu", {}, config.resolve("cpu"))
    io.write_json(run / "status.json", {"state": "complete", "chapters": {"03_training": {"state": "done", "seconds": 61.0}}, "finished": "x"})
    with pytest.raises(config.ConfigError, match=r"is complete: running this chapter here would rewrite .*rewrite=True"):
        book.setup_chapter("cpu", run)
    assert book.setup_chapter("cpu", run, rewrite=True)["run_dir"] == str(run)
    # JupyterLab's kernel runs in notebooks/: a relative run_dir is read from the project root, and one that does not
    # exist is refused instead of making notebooks/results/... and training there
    monkeypatch.chdir(config.PROJECT_ROOT / "notebooks")
    with pytest.raises(config.ConfigError, match=rf"run_dir {re.escape(str(config.PROJECT_ROOT))}/results/cpu/no-such-run does not exist"):
        book.setup_chapter("cpu", "results/cpu/no-such-run")
    assert not (config.PROJECT_ROOT / "notebooks" / "results").exists()
    # run_dir=None says that it starts a new run, and how long the chapters took in the last complete run
    said: list[str] = []
    cfg = book.setup_chapter("cpu", None, results_root=str(tmp_path / "results"), log=said.append)
    assert Path(cfg["run_dir"]).parent == run.parent and "NEW run" in said[0] and "03_training 61 s" in said[0]


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    """A real LoRA adapter of the tiny model, saved by peft."""
    from peft import LoraConfig, get_peft_model

    from lib import model as M

    model, _ = M.load_model("tiny", device="cpu")
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    return folder


DAMAGED_ADAPTER = {
    "truncated-weights": ("adapter_model.safetensors", lambda b: b[: len(b) // 2], r"not a complete safetensors file"),
    "empty-weights": ("adapter_model.safetensors", lambda b: b"", r"not a complete safetensors file"),
    "random-weights": ("adapter_model.safetensors", lambda b: bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)),
                       r"not a complete safetensors file"),
    "empty-config": ("adapter_config.json", lambda b: b"", r"adapter_config\.json is not valid JSON"),
    "invalid-config": ("adapter_config.json", lambda b: b'{"r": 2}', r"adapter_config\.json is not an adapter config"),
}


@pytest.mark.parametrize("case", list(DAMAGED_ADAPTER))
def test_a_damaged_adapter_is_named_with_what_to_do(saved_adapter, tmp_path, case):
    import shutil

    from lib import model as M

    name, damage, expect = DAMAGED_ADAPTER[case]
    folder = tmp_path / "adapter"
    shutil.copytree(saved_adapter, folder)
    (folder / name).write_bytes(damage((folder / name).read_bytes()))
    with pytest.raises(M.DamagedFilesError, match=expect) as err:
        M.load_adapter(None, folder)
    assert str(folder) in str(err.value) and "train it again" in str(err.value)


def _energy_system(run: Path) -> Path:
    from lib import baselines as bl

    rng = np.random.default_rng(0)
    clips = [(a * rng.standard_normal(800)).astype(np.float32) for a in [0.5] * 10 + [0.01] * 10]
    labels = ["speech"] * 10 + ["nonspeech"] * 10
    return bl.EnergyDetector().fit(clips, labels, clips, labels).save_to_run(run)


@pytest.mark.parametrize("text,expect", [("", r"system\.yaml is empty"), ("kind: [energy\n", r"system\.yaml is not valid YAML"),
                                         ("- a list\n", r"system\.yaml is not a mapping")])
def test_a_damaged_system_yaml_is_named(tmp_path, text, expect):
    from lib import systems

    folder = _energy_system(tmp_path)
    (folder / "system.yaml").write_text(text)
    with pytest.raises(systems.SavedSystemError, match=expect + r".*save the system again"):
        systems.load_system(str(tmp_path))


def test_a_truncated_fitted_baseline_is_named(tmp_path):
    from lib import baselines as bl
    from lib import systems

    folder = _energy_system(tmp_path)
    model = folder / bl.MODEL_FILE
    model.write_bytes(model.read_bytes()[:300])
    with pytest.raises(systems.SavedSystemError, match=rf"{bl.MODEL_FILE} is damaged or was replaced.*fit it again"):
        systems.load_system(str(tmp_path))
    spec = yaml.safe_load((folder / "system.yaml").read_text())
    io.write_yaml(folder / "system.yaml", {k: v for k, v in spec.items() if k != "sha256"})  # no checksum to compare
    with pytest.raises(systems.SavedSystemError, match=r"cannot read .*model\.skops .*damaged"):
        systems.load_system(str(tmp_path))


class _Payload:
    """What a crafted pickle does when loaded: run code (here, write a marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_fitted_baselines_are_saved_in_a_format_that_cannot_run_code(tmp_path):
    import pickle

    from lib import baselines as bl
    from lib import systems

    folder = _energy_system(tmp_path)
    assert (folder / bl.MODEL_FILE).read_bytes()[:2] == b"PK" and not list(folder.glob("*.joblib"))  # a skops zip, no pickle
    assert "sha256" in yaml.safe_load((folder / "system.yaml").read_text())
    marker = tmp_path / "marker"
    (folder / "model.joblib").write_bytes(pickle.dumps({"estimator": _Payload(str(marker))}))
    spec = yaml.safe_load((folder / "system.yaml").read_text())
    io.write_yaml(folder / "system.yaml", {**spec, "file": "model.joblib", "sha256": None})
    with pytest.raises(systems.SavedSystemError, match=r"model\.joblib is a pickle, which can run code when loaded, so it is not loaded"):
        systems.load_system(str(tmp_path))
    assert not marker.exists()


def test_a_system_yaml_file_outside_its_folder_is_refused(tmp_path):
    from lib import systems

    folder = _energy_system(tmp_path / "run")
    (tmp_path / "elsewhere.skops").write_bytes((folder / "model.skops").read_bytes())
    spec = yaml.safe_load((folder / "system.yaml").read_text())
    for bad in ("../../../elsewhere.skops", str(tmp_path / "elsewhere.skops")):
        io.write_yaml(folder / "system.yaml", {**spec, "file": bad})
        with pytest.raises(systems.SavedSystemError, match=r"points outside the system folder .*; refused"):
            systems.load_system(str(tmp_path / "run"))


def test_a_half_written_base_model_says_delete_it_to_rebuild(tmp_path, monkeypatch):
    from lib import model as M

    folder = tmp_path / "tiny-qwen2-audio"
    M.build_tiny_model(folder)
    monkeypatch.setattr(M.build.tiny, "tiny_model_dir", lambda: folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    with pytest.raises(M.DamagedFilesError, match=r"tiny-qwen2-audio is damaged: model\.safetensors differs .*delete the folder to rebuild it"):
        M.load_model("tiny", device="cpu")
    (folder / M.BUILD_INFO).unlink()  # a model folder of one's own, half-copied: from_pretrained's error, named
    with pytest.raises(M.DamagedFilesError, match=r"cannot load the model in .*tiny-qwen2-audio .*damaged or half-written; delete it"):
        M.load_model(str(folder), device="cpu")


def _loop(path: Path) -> Path:
    path.symlink_to(path)
    return path


def _latin1(d: Path) -> Path:
    (d / "m.csv").write_bytes("path,label\nCafé.wav,speech\n".encode("latin-1"))
    return d / "m.csv"


# case -> (make the manifest in tmp_path, the message)
BAD_MANIFEST = {
    "a-folder": (lambda d: (d / "m.csv").mkdir() or d / "m.csv", r"manifest .*m\.csv is a folder; --manifest needs a CSV file"),
    "zero-bytes": (lambda d: _put(d / "m.csv", b""), r"manifest .*m\.csv is empty \(0 bytes\); it needs a header line"),
    "ragged-row": (lambda d: _put(d / "m.csv", b"path,label\na.wav,speech\nb.wav,nonspeech,extra\n"),
                   r"m\.csv line 3: 3 fields where the header has 2 .*must be quoted"),
    "latin-1": (_latin1, r"m\.csv is not UTF-8 text \(line 2, byte 0xe9.*iconv -f latin1 -t utf-8"),
    "blank-lines": (lambda d: _put(d / "m.csv", b"path,label\n\na.wav,speech\n\n\nb.wav,talk\n"), r"m\.csv line 6: unknown label 'talk'"),
    "multi-line-field": (lambda d: _put(d / "m.csv", b'path,label,note\na.wav,speech,"two\nlines"\nb.wav,talk,x\n'),
                         r"m\.csv line 4: unknown label 'talk'"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFEST))
def test_a_bad_manifest_is_named_by_file_and_line(tmp_path, case):
    _, root = _clips(tmp_path)
    make, expect = BAD_MANIFEST[case]
    with pytest.raises(ValueError, match=expect):
        predict.read_clip_manifest(make(tmp_path), root)


BAD_CLIP_PATH = {
    "a-folder-named-wav": (lambda r: (r / "x.wav").mkdir(), r"line 2 \('x\.wav': a folder, not an audio file\)"),
    "a-fifo": (lambda r: os.mkfifo(r / "x.wav"), r"line 2 \('x\.wav': not a regular file \(a FIFO, device or socket\)"),
    "a-link-loop": (lambda r: _loop(r / "x.wav"), r"line 2: path 'x\.wav' is a symbolic link loop"),
}


@pytest.mark.parametrize("case", list(BAD_CLIP_PATH))
def test_a_clip_path_that_is_no_file_says_what_it_is(tmp_path, monkeypatch, case):
    manifest, root = _user_manifest(tmp_path, [{"path": "x.wav", "label": "speech"}])
    make, expect = BAD_CLIP_PATH[case]
    make(root)
    _no_system(monkeypatch)
    with pytest.raises(ValueError, match=expect):
        predict.predict_manifest("webrtc", manifest, root, tmp_path / "out.csv")


def test_an_audio_root_that_is_a_link_loop_is_named(tmp_path, monkeypatch):
    manifest, _ = _clips(tmp_path)
    loop = _loop(tmp_path / "loop")
    from lib.__main__ import main

    _no_system(monkeypatch)
    with pytest.raises(ValueError, match=r"audio root .*loop cannot be resolved .*symbolic link loop"):
        predict.predict_manifest("webrtc", manifest, loop, tmp_path / "out.csv")
    assert main(["predict", "--system", "webrtc", "--manifest", str(manifest), "--audio-root", str(loop), "--out", str(tmp_path / "o.csv")]) == 2


def test_stereo_that_cancels_to_silence_is_named_as_such(tmp_path):
    x = _tone()
    path = _write(tmp_path / "inverted.wav", np.stack([x, -x], axis=1))
    with pytest.raises(AudioError, match=r"inverted\.wav: its 2 channels cancel out when averaged to mono .*pan=mono"):
        audio.load_audio(path)


def test_a_clip_that_a_system_cannot_score_is_named_at_once(tmp_path):
    manifest, root = _clips(tmp_path, [{"path": "a.wav", "label": "speech"}, {"path": "huge.wav", "label": "speech"}])
    huge = _tone()
    huge[5] = 3e38  # finite float samples, far beyond full scale
    _write(root / "huge.wav", huge)
    with pytest.raises(ValueError, match=r"clips\.csv line 3: silero_vad gave no score \(p_speech nan\) for .*huge\.wav: its samples reach 3e\+38"):
        predict.predict_manifest("silero", manifest, root, tmp_path / "out.csv")


def test_predict_batch_size_must_be_positive(tmp_path, capsys):
    from lib.__main__ import main

    manifest, root = _clips(tmp_path)
    with pytest.raises(SystemExit) as ex:
        main(["predict", "--system", "webrtc", "--manifest", str(manifest), "--audio-root", str(root), "--out", str(tmp_path / "o.csv"), "--batch-size", "0"])
    assert ex.value.code == 2 and "--batch-size: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--batch-size must be a whole number of at least 1"):
        predict.predict_manifest("webrtc", manifest, root, tmp_path / "o.csv", batch_size=0)


@pytest.mark.parametrize("override,expect", [
    ("seed=abc", r"parameter seed must be an integer \(the profile has 0\); got 'abc'"),
    ("bank_seed=1.5", r"parameter bank_seed must be an integer .*got 1\.5"),
    ("bandlimit_augment=maybe", r"parameter bandlimit_augment must be true or false .*got 'maybe'"),
    ("snrs_db=[0, loud]", r"parameter snrs_db: list items must be number"),
    ("prompt=[", r"override 'prompt=\[': the value is not valid YAML"),
])
def test_every_parameter_is_type_checked_at_start_up(tmp_path, capsys, override, expect):
    from lib.__main__ import main

    assert main(["book", "--set", override, "--run-id", "t", "--results-dir", str(tmp_path / "r")]) == 2
    assert re.search(expect, capsys.readouterr().err)
    assert not (tmp_path / "r").exists()
    assert config.resolve("cpu", learning_rate="1e-3")["learning_rate"] == 0.001  # YAML reads 1e-3 as text: a number is meant
    assert config.resolve("cpu", gradient_checkpointing="layers:24")["gradient_checkpointing"] == "layers:24"


def test_a_damaged_params_or_status_file_is_named_not_a_traceback(tmp_path, capsys):
    from lib.__main__ import main

    run = tmp_path / "results" / "cpu" / "r"
    run.mkdir(parents=True)
    (run / "params.yaml").write_text("")
    io.write_json(run / "status.json", {"state": "complete", "chapters": {}})
    with pytest.raises(config.ConfigError, match=r"params\.yaml is damaged \(empty\): the run's parameters are lost"):
        book.read_params(run)
    assert main(["rerun", str(run)]) == 2 and "params.yaml is damaged" in capsys.readouterr().err
    assert main(["status", str(run)]) == 0 and "params.yaml is damaged" in capsys.readouterr().out
    (run / "status.json").write_text('{"state": "runn')
    assert book.read_status(run)["state"] == "damaged"
    assert main(["status", str(run)]) == 1 and "unreadable" in capsys.readouterr().out


def test_predict_scores_unlabelled_clips(tmp_path):
    manifest, root = _clips(tmp_path, [{"path": "a.wav"}, {"path": "b.wav"}])
    out = predict.predict_manifest("webrtc", manifest, root, tmp_path / "out.csv")
    df = pd.read_csv(out, keep_default_na=False)
    assert len(df) == 2 and set(df["label"]) == {""} and set(df["pred"]) <= {"speech", "nonspeech"}


def test_on_error_skip_writes_the_rest_and_lists_the_failures(tmp_path, capsys):
    from lib.__main__ import main

    manifest, root = _clips(tmp_path, [{"path": "a.wav", "label": "speech"}, {"path": "bad.wav", "label": "speech"},
                                       {"path": "b.wav", "label": "nonspeech"}])
    _put(root / "bad.wav", b"not audio\n" * 50)
    with pytest.raises(ValueError, match=r"clips\.csv line 3: cannot read .*bad\.wav"):
        predict.predict_manifest("webrtc", manifest, root, tmp_path / "stop.csv")
    assert not (tmp_path / "stop.csv").exists()
    out = tmp_path / "skip.csv"
    assert main(["predict", "--system", "webrtc", "--manifest", str(manifest), "--audio-root", str(root), "--out", str(out), "--on-error", "skip"]) == 0
    assert pd.read_csv(out)["path"].tolist() == ["a.wav", "b.wav"]
    err = capsys.readouterr().err
    assert "1 of 3 clips skipped" in err and "line 3: bad.wav" in err


def test_out_of_range_float_audio_gets_a_warning_naming_the_clip(tmp_path):
    from lib.audio import AudioNote

    manifest, root = _clips(tmp_path)
    _write(root / "b.wav", _tone() * 1000)
    with pytest.warns(AudioNote, match=r"clips\.csv line 3: .*b\.wav has samples up to 300, beyond full scale"):
        predict.predict_manifest("webrtc", manifest, root, tmp_path / "out.csv")
