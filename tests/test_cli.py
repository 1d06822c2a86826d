"""The `hiseg` dispatcher: every subcommand is registered and `benchmark` forwards to scripts."""

from __future__ import annotations

import pytest

import hiseg_jax
from hiseg_jax import cli
from hiseg_jax.commands import benchmark


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


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hiseg {hiseg_jax.__version__}"
