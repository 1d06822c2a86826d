"""Where files live: environment variables over a user-cache default, nothing relative to
the installed code."""

from __future__ import annotations

from pathlib import Path

import pytest

from hiseg_jax import paths

VARIABLES = ("HISEG_HOME", "HISEG_CHECKPOINTS", "HISEG_CACHE", "HISEG_TFDS_DIR", "XDG_CACHE_HOME")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return monkeypatch


def test_defaults_live_in_the_user_cache(clean_env, tmp_path):
    home = tmp_path / "user" / ".cache" / "hiseg_jax"
    assert paths.home() == home
    assert paths.checkpoint_dir() == home / "checkpoints"
    assert paths.download_dir() == home / "downloads"
    assert paths.prepared_datasets_dir() == home / "tfds"
    default = home / "checkpoints" / f"{paths.DEFAULT_BACKBONE}.safetensors"
    assert paths.default_checkpoint_path() == default
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.home() == tmp_path / "xdg" / "hiseg_jax"


def test_each_variable_moves_its_folder(clean_env, tmp_path):
    clean_env.setenv("HISEG_HOME", str(tmp_path / "h"))
    assert paths.checkpoint_dir() == tmp_path / "h" / "checkpoints"
    clean_env.setenv("HISEG_CHECKPOINTS", str(tmp_path / "c"))
    clean_env.setenv("HISEG_CACHE", str(tmp_path / "d"))
    clean_env.setenv("HISEG_TFDS_DIR", str(tmp_path / "t"))
    assert (paths.checkpoint_dir(), paths.download_dir(), paths.prepared_datasets_dir()) == (
        tmp_path / "c",
        tmp_path / "d",
        tmp_path / "t",
    )


def test_benchmarks_come_from_a_source_checkout(clean_env, tmp_path):
    clean_env.chdir(tmp_path)
    with pytest.raises(ValueError, match="source"):
        paths.benchmarks_dir()
    (tmp_path / "benchmarks").mkdir()
    assert paths.benchmarks_dir() == Path(tmp_path / "benchmarks")


def test_no_module_locates_files_through_its_own_path():
    package = Path(paths.__file__).parent
    users = [p for p in package.rglob("*.py") if "__file__" in p.read_text(encoding="utf-8")]
    assert users == []
