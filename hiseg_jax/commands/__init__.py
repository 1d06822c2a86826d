"""Subcommands of the `hiseg` command line, one module each."""
