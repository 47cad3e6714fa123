"""Profiles, overrides and atomic writes."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import pandas as pd
import pytest

from lib import config, io


def test_every_profile_resolves_with_only_known_keys():
    base = set(config.valid_keys())
    for name in config.available_profiles():
        cfg = config.resolve(name)
        assert set(cfg) - {"profile"} == base
        assert cfg["profile"] == name


def test_full_profile_uses_the_seed_recipe_and_real_model():
    cfg = config.resolve("full")
    assert cfg["model_name_or_path"] == "Qwen/Qwen2-Audio-7B-Instruct"
    assert (cfg["lora_r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (16, 32, 0.05)
    assert cfg["learning_rate"] == pytest.approx(2e-4)
    assert cfg["epochs"] == 3
    assert cfg["micro_batch_size"] * cfg["grad_accum_steps"] == 16
    assert cfg["smoke"] is False and config.resolve("cpu")["smoke"] is False  # the mini model gives real (mini) results
    assert config.resolve("cpu")["model_name_or_path"] == "mini"


def test_typo_in_parameter_lists_valid_names():
    with pytest.raises(config.ConfigError, match=r"unknown parameter 'sed'.*did you mean seed"):
        config.resolve("cpu", {"sed": 3})


def test_typo_in_profile_lists_profiles():
    with pytest.raises(config.ConfigError, match=r"unknown profile 'cpuu'.*valid profiles: .*cpu"):
        config.resolve("cpuu")


def test_none_override_keeps_profile_value_and_others_win():
    cfg = config.resolve("cpu", {"seed": None, "epochs": 7})
    assert cfg["seed"] == config.load_profile("cpu")["seed"] and cfg["epochs"] == 7


def test_a_section_is_the_profiles_values_with_overrides_and_names_what_is_wrong():
    @dataclass
    class Schedule:
        SECTION: ClassVar[str] = "schedule"
        epochs: int
        learning_rate: float

    cfg = config.resolve("cpu")
    assert config.section(cfg, Schedule) == Schedule(cfg["epochs"], cfg["learning_rate"])  # other keys ignored
    assert config.section(cfg, Schedule, epochs=9, learning_rate=None) == Schedule(9, cfg["learning_rate"])  # None keeps
    with pytest.raises(config.ConfigError, match=r"unknown schedule parameter\(s\) \['epoch'\]; valid: epochs, learning_rate$"):
        config.section(cfg, Schedule, epoch=9)
    with pytest.raises(config.ConfigError, match=r"schedule parameter\(s\) \['learning_rate'\] missing .*lib\.config\.resolve"):
        config.section({"epochs": 3}, Schedule)
    with pytest.raises(TypeError, match="builds a dataclass"):
        config.section(cfg, dict)
    # every field of the code's sections is a profile key: the profile is the one place where defaults live
    from lib import train

    for cls in (train.TrainConfig, train.BaseModelConfig):
        names = {f.name for f in fields(cls)}
        assert names <= set(config.valid_keys()), names - set(config.valid_keys())
        assert all(f.default is f.default_factory for f in fields(cls)), f"{cls.__name__} declares a default"
        for profile in config.available_profiles():
            config.section(config.resolve(profile), cls)


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    assert config.resolve("cpu")["data_dir"] == str(tmp_path.resolve())


def test_project_paths_are_absolute():
    cfg = config.resolve("cpu")
    for key in config.PROJECT_PATH_KEYS:
        assert cfg[key].startswith(str(config.PROJECT_ROOT))


@pytest.mark.parametrize("text,expected", [("seed=3", ("seed", 3)), ("snrs_db=[0, 10]", ("snrs_db", [0, 10])), ("data_dir=null", ("data_dir", None))])
def test_parse_override(text, expected):
    assert config.parse_override(text) == expected


def test_parse_override_rejects_missing_equals():
    with pytest.raises(config.ConfigError, match="key=value"):
        config.parse_override("seed")


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "results.csv"
    io.write_csv(target, pd.DataFrame({"a": [1, 2]}))
    good = target.read_text()

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise Boom
    assert target.read_text() == good
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temporary left behind


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "bank"
    with io.atomic_dir(target) as d:
        (d / "manifest.csv").write_text("v1")
    with pytest.raises(RuntimeError):
        with io.atomic_dir(target) as d:
            (d / "manifest.csv").write_text("half")
            raise RuntimeError("killed")
    assert (target / "manifest.csv").read_text() == "v1"
    with io.atomic_dir(target) as d:
        (d / "manifest.csv").write_text("v2")
    assert (target / "manifest.csv").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]


def test_atomic_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    path = io.write_text(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


class _Refused(ValueError):
    pass


@pytest.mark.parametrize("kind", ["regular", "broken_link", "link_loop", "missing", "folder", "fifo", "device"])
def test_check_regular_file_names_what_the_path_is(tmp_path, kind):
    import os
    from pathlib import Path

    p = tmp_path / "x.csv"
    if kind == "regular":
        p.write_text("a\n")
    elif kind == "broken_link":
        p.symlink_to(tmp_path / "gone.csv")
    elif kind == "link_loop":
        p.symlink_to(p)
    elif kind == "folder":
        p.mkdir()
    elif kind == "fifo":
        os.mkfifo(p)
    elif kind == "device":
        p.symlink_to(Path("/dev/null"))
    messages = {k: f"{k}: {{path}}" for k in ("broken_link", "missing", "folder", "special")}
    if kind == "regular":
        assert io.check_regular_file(str(p), _Refused, messages) == p
        return
    expected = {"link_loop": "broken_link", "fifo": "special", "device": "special"}.get(kind, kind)
    error = FileNotFoundError if kind == "missing" else _Refused
    with pytest.raises(error, match=rf"^{expected}: .*x\.csv$"):
        io.check_regular_file(p, _Refused, messages, missing_error=FileNotFoundError)
    if kind == "missing":  # without missing_error, a missing path raises the caller's error too
        with pytest.raises(_Refused, match="^missing: "):
            io.check_regular_file(p, _Refused, messages)
