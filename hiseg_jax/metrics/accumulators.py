"""Dataset accumulators that can be saved, loaded and merged.

They keep every image's scores (a few numbers per image) keyed by image id, plus integer
per-class totals. Means are taken with `math.fsum`, which is exactly rounded and so does not
depend on the order images were added: a run split across processes, or resumed from a saved
file, gives totals identical to a single run's (as long as each image's own scores are).
Merging refuses an image id seen twice.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hiseg_jax.hierarchies.labelspace import LabelSpace
from hiseg_jax.metrics.scores import BatchScores, BSDSScores
from hiseg_jax.metrics.semantic import semantic_scores

_FORMAT = "hiseg-metrics-v1"


@dataclasses.dataclass
class Accumulator:
    """`kind` "regions" (NM / NH covering and semantic totals against a `LabelSpace`) or
    "bsds" (area-weighted covering). `per_image` arrays have the images on axis 0."""

    kind: str
    meta: dict[str, Any]
    image_ids: list[str] = dataclasses.field(default_factory=list)
    per_image: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    totals: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @classmethod
    def for_regions(cls, space: LabelSpace, threshold: float = 0.0) -> Accumulator:
        """For `evaluate_batch` scores against `space`; `threshold` records the IoU threshold
        given to `evaluate_batch` (runs with different settings refuse to merge)."""
        return cls(
            "regions",
            dict(
                space=space.name,
                set_names=list(space.set_names),
                class_names=list(space.names),
                threshold=threshold,
                region_sets=space.region_sets.tolist(),
            ),
        )

    @classmethod
    def for_bsds(cls) -> Accumulator:
        return cls("bsds", {})

    def add(self, scores: BatchScores | BSDSScores, image_ids: Sequence[Any]) -> None:
        """Append one batch's per-image scores under the given ids (one per image)."""
        expected = BatchScores if self.kind == "regions" else BSDSScores
        if not isinstance(scores, expected):
            raise ValueError(f"a {self.kind!r} accumulator takes {expected.__name__}")
        ids = [str(i) for i in image_ids]
        if len(ids) != scores.n_nodes.shape[0]:
            raise ValueError(f"{len(ids)} image ids for a batch of {scores.n_nodes.shape[0]}")
        if self.kind == "regions":
            rows = dict(
                n_nodes=scores.n_nodes,
                n_regions=scores.n_regions,
                nm_covering=scores.nm_covering,
                nh_covering=scores.nh_covering,
            )
            sums = {
                k: np.asarray(getattr(scores.matches, k), np.int64).sum(0)
                for k in ("tp", "fp", "fn")
            }
        else:
            rows = dict(
                n_nodes=scores.n_nodes,
                n_annotators=scores.n_annotators,
                best=scores.best,
                levels=scores.levels,
            )
            sums = {}
        self._extend(ids, {k: np.asarray(v) for k, v in rows.items()}, sums)

    def _extend(
        self, ids: list[str], rows: dict[str, np.ndarray], sums: dict[str, np.ndarray]
    ) -> None:
        twice = (set(ids) & set(self.image_ids)) | {i for i in ids if ids.count(i) > 1}
        if twice:
            raise ValueError(f"image ids scored twice: {sorted(twice)[:5]}")
        for key, value in rows.items():
            if key in self.per_image and self.per_image[key].shape[1:] != value.shape[1:]:
                raise ValueError(
                    f"{key}: per-image shape {value.shape[1:]} differs from the "
                    f"accumulated {self.per_image[key].shape[1:]}"
                )
            old = self.per_image.get(key, value[:0])
            self.per_image[key] = np.concatenate([old, value])
        for key, value in sums.items():
            self.totals[key] = self.totals.get(key, 0) + value
        self.image_ids.extend(ids)

    def merge(self, other: Accumulator) -> Accumulator:
        """A new accumulator holding both runs' images (same kind and settings required)."""
        if (self.kind, self.meta) != (other.kind, other.meta):
            raise ValueError("cannot merge accumulators of different kinds or settings")
        out = Accumulator(self.kind, dict(self.meta))
        out._extend(list(self.image_ids), dict(self.per_image), dict(self.totals))
        out._extend(list(other.image_ids), dict(other.per_image), dict(other.totals))
        return out

    def save(self, path: str | Path) -> None:
        header = dict(format=_FORMAT, kind=self.kind, meta=self.meta, image_ids=self.image_ids)
        arrays = {f"per_image/{k}": v for k, v in self.per_image.items()}
        arrays |= {f"totals/{k}": v for k, v in self.totals.items()}
        with open(path, "wb") as f:
            np.savez(f, header=np.asarray(json.dumps(header)), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Accumulator:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            if header.get("format") != _FORMAT:
                raise ValueError(f"{path}: not a {_FORMAT} accumulator file")
            out = cls(header["kind"], header["meta"], list(header["image_ids"]))
            for key in data.files:
                group, _, name = key.partition("/")
                if group in ("per_image", "totals"):
                    getattr(out, group)[name] = data[key]
        return out

    def summary(self) -> dict[str, Any]:
        return _summary_regions(self) if self.kind == "regions" else _summary_bsds(self)


def _mean(values: np.ndarray) -> float:
    """Exactly rounded mean (order-independent); NaN-free: callers pass >= 1 value."""
    return math.fsum(float(v) for v in values) / len(values)


def _summary_regions(acc: Accumulator) -> dict[str, Any]:
    """Per region set: NMCovering (mean over images with a region of the set), images used,
    semantic scores of the set's classes (skipped when none was seen); NHCovering on T_gt;
    mean number of candidate nodes (report it beside NMCovering)."""
    if not acc.image_ids:
        raise ValueError("no image was added")
    rows, out = acc.per_image, {"images": len(acc.image_ids)}
    out["mean_nodes"] = _mean(rows["n_nodes"])
    sets = np.asarray(acc.meta["region_sets"], bool)
    for s, name in enumerate(acc.meta["set_names"]):
        used = rows["n_regions"][:, s] > 0
        entry: dict[str, Any] = {"images": int(used.sum()), "skipped": int((~used).sum())}
        if used.any():
            entry["nm_covering"] = _mean(rows["nm_covering"][used, s])
            if s == 0:
                entry["nh_covering"] = _mean(rows["nh_covering"][used])
            scores = semantic_scores(acc.totals["tp"], acc.totals["fp"], acc.totals["fn"], sets[s])
            entry |= dict(
                classes=int(scores.seen.sum()),
                miou=scores.miou,
                pacc=scores.pacc,
                macc=scores.macc,
                fiou=scores.fiou,
            )
        out[name] = entry
    return out


def _summary_bsds(acc: Accumulator) -> dict[str, Any]:
    """Best, ODS (best single level for the dataset) and OIS (best level per image) over the
    levels 1..L of the trees (level 0, the root alone, only when it is the only level)."""
    rows = acc.per_image
    used = rows["n_annotators"] > 0 if acc.image_ids else np.zeros(0, bool)
    if not used.any():
        raise ValueError("no image with a labelled annotator was added")
    first = 1 if rows["levels"].shape[1] > 1 else 0
    levels = rows["levels"][used, first:]
    per_level = [_mean(levels[:, j]) for j in range(levels.shape[1])]
    return dict(
        images=int(used.sum()),
        skipped=int((~used).sum()),
        mean_nodes=_mean(rows["n_nodes"][used]),
        best=_mean(rows["best"][used]),
        ods=max(per_level),
        ods_level=first + int(np.argmax(per_level)),
        ois=_mean(levels.max(axis=1)),
    )
