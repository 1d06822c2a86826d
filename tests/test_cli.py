"""The `hiseg` dispatcher: every subcommand is registered and `benchmark` forwards to scripts."""

from __future__ import annotations

import dataclasses

import pytest

import hiseg_jax
from hiseg_jax import cli
from hiseg_jax.commands import benchmark
from hiseg_jax.commands.options import PARTITION_HELP
from hiseg_jax.spectral.config import PartitionConfig


def test_every_command_is_registered(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_benchmark_lists_the_scripts(capsys):
    assert cli.main(["benchmark", "list"]) == 0
    listed = capsys.readouterr().out.split()
    assert "metrics" in listed and listed == benchmark.available()


def test_benchmark_unknown_name_names_the_valid_ones(capsys):
    assert cli.main(["benchmark", "no_such_bench"]) == 2
    err = capsys.readouterr().err
    assert "no_such_bench" in err and "metrics" in err


def test_benchmark_outside_a_source_checkout_says_it_needs_one(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HISEG_BENCHMARKS", str(tmp_path / "absent"))
    assert cli.main(["benchmark", "list"]) == 2
    err = capsys.readouterr().err
    assert "source" in err and "HISEG_BENCHMARKS" in err


@pytest.mark.parametrize("command", ["segment", "evaluate"])
def test_every_partition_option_says_what_it_changes(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert set(PARTITION_HELP) == {f.name for f in dataclasses.fields(PartitionConfig)}
    for name, meaning in PARTITION_HELP.items():
        assert "--" + name.replace("_", "-") in out
        assert " ".join(meaning.split()) in out
    assert "--solver" not in out and "hiseg_jax/" not in out and "hiseg_jax." not in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hiseg {hiseg_jax.__version__}"


@pytest.mark.parametrize(
    ("command", "default"),
    [
        ("segment", "(default: guided)"),
        ("evaluate", "(default: guided; none with --resolution patch)"),
    ],
)
def test_refine_option_names_its_default(command, default, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--refine {guided,crf,none}" in out and default in out
    assert "--crf the same as --refine crf" in out


def test_partition_options_round_trip_booleans_and_reject_bad_ones(capsys):
    """partition_flags -> argparse -> partition_config gives the config back (bool fields
    parse 'True' / 'false', not Python's truthiness); bad text is one argparse line."""
    import argparse

    from hiseg_jax.commands.options import (
        add_partition_arguments,
        partition_config,
        partition_flags,
    )

    parser = argparse.ArgumentParser()
    add_partition_arguments(parser)
    config = PartitionConfig(perturb_fallback=True, merge_below=4, max_perturb=200.0)
    assert partition_config(parser.parse_args(partition_flags(config))) == config
    assert not partition_config(parser.parse_args(["--perturb-fallback", "false"])).perturb_fallback
    with pytest.raises(SystemExit):
        parser.parse_args(["--perturb-fallback", "maybe"])
    assert "expected true or false" in capsys.readouterr().err
