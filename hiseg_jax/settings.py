"""Recorded settings: what differs between two JSON settings records, for the resume checks
of `hiseg evaluate` (settings.json) and `hiseg segment` (each image's done.json)."""

from __future__ import annotations

import json
from typing import Any

_ABSENT = object()


def settings_differences(
    old: dict[str, Any], new: dict[str, Any], prefix: str = ""
) -> list[tuple[str, str, str]]:
    """(dotted field name, old value, new value) of every leaf field that differs between two
    JSON settings, nested dicts compared field by field; a missing field reads "(absent)"."""
    differ = []
    for key in sorted(old.keys() | new.keys()):
        a, b, name = old.get(key, _ABSENT), new.get(key, _ABSENT), prefix + key
        if isinstance(a, dict) and isinstance(b, dict):
            differ += settings_differences(a, b, name + ".")
        elif a != b:
            differ.append((name, _show(a), _show(b)))
    return differ


def differences_text(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The differences in one line: "partition.levels 5 there, 3 now; seed 4 there, 0 now"."""
    differ = settings_differences(old, new)
    return "; ".join(f"{name} {was} there, {now} now" for name, was, now in differ)


def _show(value: object) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)
