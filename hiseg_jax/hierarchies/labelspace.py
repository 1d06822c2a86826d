"""The scoring index space of a dataset's ground truth, built from a `Hierarchy`.

Metrics see ground truth as int32 maps of GT node indices in [0, G) with -1 for ignored
pixels. A `LabelSpace` holds what turns raw label maps into such maps (`encode`), the GT tree
over the G nodes (`parent`, `ancestor`) and the sets of nodes that are scored as regions
(`region_sets`: set 0, "all", is the whole GT tree T_gt; "depthD" sets are the classes of one
depth of the label hierarchy). All host-side NumPy: it is data, prepared once per dataset.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from hiseg_jax.hierarchies.hierarchy import Hierarchy

_DENSE_LUT_MAX = 1 << 20  # raw value ranges up to this size are encoded by a dense table


def ancestor_matrix(parent: np.ndarray) -> np.ndarray:
    """`anc[a, g]` is True iff a is g or an ancestor of g. parent: int [G], -1 for tops."""
    parent = np.asarray(parent)
    count = parent.shape[0]
    if parent.ndim != 1 or np.any((parent < -1) | (parent >= count)):
        raise ValueError(f"parent must be a vector of indices in [-1, {count}), got {parent}")
    anc = np.eye(count, dtype=bool)
    cur = np.arange(count)
    for _ in range(count):
        cur = np.where(cur >= 0, parent[np.maximum(cur, 0)], -1)
        if np.all(cur < 0):
            return anc
        anc[cur[cur >= 0], np.nonzero(cur >= 0)[0]] = True
    raise ValueError("parent array has a cycle")


@dataclasses.dataclass(frozen=True, eq=False)
class LabelSpace:
    """GT nodes [G], their tree, scored region sets [S, G] and the raw-value encoding."""

    name: str
    names: tuple[str, ...]  # [G]
    parent: np.ndarray  # int32 [G], -1 for a top node
    set_names: tuple[str, ...]  # [S]
    region_sets: np.ndarray  # bool [S, G]
    keys: np.ndarray  # int64 [V] sorted raw pixel values
    targets: np.ndarray  # int32 [V] GT node of each raw value, -1 = ignored

    def __post_init__(self) -> None:
        count = len(self.names)
        if self.parent.shape != (count,) or self.region_sets.shape != (len(self.set_names), count):
            raise ValueError(
                f"{self.name}: parent {self.parent.shape} / region_sets "
                f"{self.region_sets.shape} do not fit {count} nodes"
            )
        if self.keys.shape != self.targets.shape or np.any(np.diff(self.keys) <= 0):
            raise ValueError(f"{self.name}: keys must be sorted, unique and match targets")

    @property
    def num_nodes(self) -> int:
        return len(self.names)

    @functools.cached_property
    def ancestor(self) -> np.ndarray:
        """bool [G, G]: `ancestor[a, g]` iff GT node a contains node g."""
        return ancestor_matrix(self.parent)

    @functools.cached_property
    def _dense_table(self) -> np.ndarray:
        """int32 [high - low + 3]: target of raw value v at v - low + 1, -2 where unknown."""
        low, high = int(self.keys[0]), int(self.keys[-1])
        table = np.full(high - low + 3, -2, np.int32)
        table[self.keys - low + 1] = self.targets
        return table

    def region_set(self, set_name: str) -> np.ndarray:
        if set_name not in self.set_names:
            raise ValueError(f"{self.name}: no region set {set_name!r}; have {self.set_names}")
        return self.region_sets[self.set_names.index(set_name)]

    def encode(self, labels: np.ndarray) -> np.ndarray:
        """Raw label map(s), any shape -> int32 GT node indices (-1 = ignore). A value that is
        not in the hierarchy raises ValueError naming it."""
        labels = np.asarray(labels)
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{self.name}: label maps must be integers, got {labels.dtype}")
        low, high = int(self.keys[0]), int(self.keys[-1])
        if high - low < _DENSE_LUT_MAX:
            # Values below / above the keys are clipped onto the first / last slot (-2).
            index = np.clip(labels, low - 1, high + 1, dtype=np.int64) - (low - 1)
            out = self._dense_table[index]
        else:
            pos = np.clip(np.searchsorted(self.keys, labels), 0, len(self.keys) - 1)
            out = np.where(self.keys[pos] == labels, self.targets[pos], -2).astype(np.int32)
        if np.any(out == -2):
            unknown = np.unique(labels[out == -2])
            raise ValueError(
                f"label values not in hierarchy {self.name!r}: "
                f"{unknown[:10].tolist()}{' ...' if unknown.size > 10 else ''}"
            )
        return out


def label_space(h: Hierarchy) -> LabelSpace:
    """Scoring space of a hierarchy: node 0 is the image root (never scored); node 1 is the
    merged background when any value is background; then every foreground node in file order
    (a foreground node's region is the union of its own pixels and its foreground
    descendants'; background pixels below it go to the merged background). Region sets: "all"
    (T_gt), plus "depthD" for each depth D of a hierarchy deeper than 1 (nodes of depth D and
    shallower leaves, background included)."""
    names = ["(image)"]
    parent = [-1]
    has_background = any(
        v is not None and t == "background" for v, t in zip(h.values, h.types, strict=True)
    )
    if has_background:
        names.append("background")
        parent.append(0)
    node_of: dict[int, int] = {}
    for i, (path, node_type) in enumerate(zip(h.paths, h.types, strict=True)):
        if node_type == "foreground":
            node_of[i] = len(names)
            names.append(path)
            parent.append(node_of[h.parents[i]] if h.parents[i] >= 0 else 0)
    raw = [
        (v, node_of.get(i, 1 if t == "background" else -1))
        for i, (v, t) in enumerate(zip(h.values, h.types, strict=True))
        if v is not None
    ]
    raw.sort()
    parent_arr = np.asarray(parent, np.int32)
    anc = ancestor_matrix(parent_arr)
    depth = anc.sum(0) - 1  # the image root is at depth 0
    scored = np.arange(len(names)) > 0
    leaf = ~np.isin(np.arange(len(names)), parent_arr)
    set_names, sets = ["all"], [scored]
    max_depth = int(depth.max())
    if max_depth > 1:
        for d in range(1, max_depth + 1):
            set_names.append(f"depth{d}")
            sets.append(scored & ((depth == d) | ((depth < d) & leaf)))
    return LabelSpace(
        name=h.name,
        names=tuple(names),
        parent=parent_arr,
        set_names=tuple(set_names),
        region_sets=np.stack(sets),
        keys=np.asarray([v for v, _ in raw], np.int64),
        targets=np.asarray([t for _, t in raw], np.int32),
    )


def index_label_space(
    parent: Sequence[int] | np.ndarray,
    region_sets: np.ndarray | None = None,
    set_names: Sequence[str] | None = None,
    ignore_values: Sequence[int] = (),
    name: str = "indexed",
) -> LabelSpace:
    """A space whose raw pixel value k is GT node k (k < G = len(parent)); `ignore_values`
    map to -1. Default: one set "all" scoring every node."""
    parent = np.asarray(parent, np.int32)
    count = parent.shape[0]
    if region_sets is None:
        region_sets = np.ones((1, count), bool)
    region_sets = np.asarray(region_sets, bool)
    if set_names is None:
        set_names = ["all"] + [f"set{i}" for i in range(1, region_sets.shape[0])]
    ignore = sorted(int(v) for v in ignore_values)
    if any(0 <= v < count for v in ignore):
        raise ValueError(f"ignore values {ignore} collide with node indices [0, {count})")
    keys = np.asarray(sorted(list(range(count)) + ignore), np.int64)
    return LabelSpace(
        name=name,
        names=tuple(str(i) for i in range(count)),
        parent=parent,
        set_names=tuple(set_names),
        region_sets=region_sets,
        keys=keys,
        targets=np.where((keys >= 0) & (keys < count), keys, -1).astype(np.int32),
    )


def flat_label_space(
    num_regions: int,
    ignore_values: Sequence[int] = (),
    unscored: Sequence[int] = (),
    name: str = "flat",
) -> LabelSpace:
    """Flat ground truth (BSDS segment ids, instance ids): value k is region k < num_regions,
    every region its own lineage. `unscored` ids (e.g. the background of an instance map, for
    NFCovering) keep their pixels but are not scored as regions."""
    scored = np.ones((1, num_regions), bool)
    scored[0, list(unscored)] = False
    return index_label_space(np.full(num_regions, -1), scored, ["all"], ignore_values, name)
