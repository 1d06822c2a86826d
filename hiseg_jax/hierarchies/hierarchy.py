"""Label hierarchies as data: the `*.txt` format, its parser and its writer.

Format (one node per line; `#` starts a comment line; blank lines are skipped):

    path | value | type

- `path`: the node's name preceded by its ancestors' names, joined by `/`
  (`vehicle/car`). The parent (`vehicle`) must appear on an earlier line; a path without `/`
  is a top-level node (child of the implicit image root). Names may hold spaces, not `/` or
  `|`. Paths are unique; names need not be (`quadruped/head`, `biped/head`).
- `value`: the integer pixel value carried by pixels of this node in the dataset's label
  maps, or `-` when no pixel carries this node directly (a grouping node). Values are unique.
  A node with children may have a value too: its pixels that no child claims (an object's
  pixels outside all its annotated parts).
- `type`: `foreground`, `background` or `ignore`. Background nodes are merged into one
  region before matching; ignore nodes' pixels are excluded everywhere. A node whose subtree
  holds a foreground value must be `foreground`; otherwise it shares the single type of the
  values in its subtree.

Every leaf must carry a value. A pixel labelled v belongs to node(v) and all its ancestors.
"""

from __future__ import annotations

import dataclasses
from importlib import resources

TYPES = ("foreground", "background", "ignore")
_SEP = "/"


@dataclasses.dataclass(frozen=True)
class Hierarchy:
    """A parsed label hierarchy; node i is described by `paths[i]`, `values[i]`, `types[i]`,
    `parents[i]` (-1 for a top-level node). Nodes are in file order, parents first."""

    name: str
    paths: tuple[str, ...]
    values: tuple[int | None, ...]
    types: tuple[str, ...]
    parents: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.rsplit(_SEP, 1)[-1] for p in self.paths)

    @property
    def depths(self) -> tuple[int, ...]:
        """Depth of each node: 1 for top-level nodes (the image root has depth 0)."""
        return tuple(p.count(_SEP) + 1 for p in self.paths)

    def children(self, i: int) -> tuple[int, ...]:
        return tuple(j for j, p in enumerate(self.parents) if p == i)

    def index(self, path: str) -> int:
        try:
            return self.paths.index(path)
        except ValueError:
            raise ValueError(f"hierarchy {self.name!r} has no node {path!r}") from None


def parse_hierarchy(text: str, name: str) -> Hierarchy:
    """Parse the text format above; errors name the line."""
    paths: list[str] = []
    values: list[int | None] = []
    types: list[str] = []
    parents: list[int] = []
    index: dict[str, int] = {}
    owner: dict[int, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue

        def fail(msg: str, lineno: int = lineno, raw: str = raw) -> ValueError:
            return ValueError(f"{name}: line {lineno}: {msg}: {raw!r}")

        fields = [f.strip() for f in line.split("|")]
        if len(fields) != 3:
            raise fail("expected 'path | value | type'")
        path, value_text, node_type = fields
        parts = path.split(_SEP)
        if any(not p.strip() or p != p.strip() for p in parts):
            raise fail("empty name or stray spaces around '/' in the path")
        if path in index:
            raise fail(f"duplicate path {path!r}")
        parent_path = _SEP.join(parts[:-1])
        if parent_path and parent_path not in index:
            raise fail(f"parent {parent_path!r} is not defined on an earlier line")
        if node_type not in TYPES:
            raise fail(f"type must be one of {TYPES}")
        value = None
        if value_text != "-":
            try:
                value = int(value_text)
            except ValueError:
                raise fail("value must be an integer or '-'") from None
            if value in owner:
                raise fail(f"value {value} already used by {paths[owner[value]]!r}")
            owner[value] = len(paths)
        index[path] = len(paths)
        paths.append(path)
        values.append(value)
        types.append(node_type)
        parents.append(index[parent_path] if parent_path else -1)
    if not paths:
        raise ValueError(f"{name}: no nodes")
    hierarchy = Hierarchy(name, tuple(paths), tuple(values), tuple(types), tuple(parents))
    _check_types(hierarchy)
    return hierarchy


def _check_types(h: Hierarchy) -> None:
    """Leaves carry values; a node's type agrees with the types of the values in its subtree
    (foreground if any is foreground, else their single common type)."""
    held: list[set[str]] = [
        {t} if v is not None else set() for v, t in zip(h.values, h.types, strict=True)
    ]
    for i in reversed(range(len(h))):
        if h.parents[i] >= 0:
            held[h.parents[i]] |= held[i]
    for i, path in enumerate(h.paths):
        if not held[i]:
            raise ValueError(f"{h.name}: {path!r} has no pixel value in its subtree")
        expected = "foreground" if "foreground" in held[i] else None
        if expected is None and len(held[i]) == 1:
            expected = next(iter(held[i]))
        if expected is None:
            raise ValueError(f"{h.name}: {path!r} mixes background and ignore values")
        if h.types[i] != expected:
            raise ValueError(
                f"{h.name}: {path!r} is {h.types[i]!r} but its subtree makes it {expected!r}"
            )


def format_hierarchy(h: Hierarchy, header: str = "") -> str:
    """Write `h` in the text format (`parse_hierarchy(format_hierarchy(h), h.name) == h`)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    width = max(len(p) for p in h.paths)
    for path, value, node_type in zip(h.paths, h.values, h.types, strict=True):
        value_text = "-" if value is None else str(value)
        lines.append(f"{path:<{width}} | {value_text:>8} | {node_type}")
    return "\n".join(lines) + "\n"


def available_hierarchies() -> tuple[str, ...]:
    """Names of the hierarchies shipped with the package (`<name>.txt` beside this module)."""
    files = resources.files(__package__).iterdir()
    return tuple(sorted(f.name[:-4] for f in files if f.name.endswith(".txt")))


def load_hierarchy(name: str) -> Hierarchy:
    """Load a shipped hierarchy by name (see `available_hierarchies()`)."""
    if name not in available_hierarchies():
        raise ValueError(f"unknown hierarchy {name!r}; available: {available_hierarchies()}")
    text = resources.files(__package__).joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return parse_hierarchy(text, name)
