"""Tree quality of named partitioner settings on BSDS500, with the spread of PRNG keys.

Each setting is `NAME:FIELD=VALUE,...`: PartitionConfig overrides of the default, or of the
paper's stage A when the list starts with `@paper` (`PartitionConfig.paper()`), e.g.
`paper:@paper`, `k48:stage_a_k=48,lanczos_iters=128`. Every setting runs under each PRNG
key on the cached default-backbone features of the first `--images` images of the split
(`bsds_data.py`), in fixed batches of `--batch` images (a short last batch padded with
copies), and its trees are scored against the human segmentations with the project's
metrics exactly as `hiseg evaluate` scores them (`eval_scoring`: image resolution by
default, nearest-upsampled labels; `--resolution patch` samples the GT at patch centres):
Best (area-weighted covering of the best node per segment), NMCovering, ODS / OIS (one tree
level for the dataset / per image) and the node count. Per-image records are appended to
`<out>/<setting>__<hash>__key<k>.jsonl` as batches finish, so an interrupted sweep resumes
where it stopped (the hash covers the config, split, size, image count and resolution).

    .venv/bin/python benchmarks/partition_sweep.py --split train --size 448 --images 200
        --keys 0 1 2 --setting paper:@paper --setting default: [--markdown table.md]

The table gives, per setting, the mean over keys of each dataset mean and, beside it, the
spread (max - min over keys); s/img is the partitioner's wall time per image (compile
excluded, batch `--batch`, noisy on a shared machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bsds_data  # noqa: E402

from hiseg_jax.evaluation import scoring as eval_scoring  # noqa: E402
from hiseg_jax.spectral.config import PartitionConfig  # noqa: E402
from hiseg_jax.spectral.partition import partition  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "partition_sweep"
METRICS = ("best", "nm", "ods", "ois", "nodes")
HEADERS = ("Best", "NMCovering", "ODS", "OIS", "nodes")


def parse_setting(text: str) -> tuple[str, PartitionConfig]:
    """'name:[@paper,]field=value,...' -> (name, PartitionConfig)."""
    name, _, assignments = text.partition(":")
    items = [a for a in assignments.split(",") if a]
    paper = bool(items) and items[0] == "@paper"
    items = items[1:] if paper else items
    base = PartitionConfig.paper() if paper else PartitionConfig()
    kwargs = {}
    for item in items:
        field, _, value = item.partition("=")
        if not hasattr(base, field):
            raise SystemExit(f"unknown PartitionConfig field {field!r} in {text!r}")
        default = getattr(base, field)
        if isinstance(default, bool):
            kwargs[field] = value.lower() in ("1", "true", "yes")
        else:
            kwargs[field] = type(default)(value)
    if paper and "n_parts" in kwargs and "stage_a_k" not in kwargs:
        kwargs["stage_a_k"] = kwargs["n_parts"]
    return name or "default", dataclasses.replace(base, **kwargs)


def records_path(out: Path, name: str, config: PartitionConfig, key: int, ident: dict) -> Path:
    text = json.dumps(dataclasses.asdict(config) | ident, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return out / f"{name}__{digest}__key{key}.jsonl"


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line of an interrupted run
            break
    return out


def score_batch(tree: object, segs: Sequence[np.ndarray], resolution: str) -> list[dict]:
    """BSDS records (eval_scoring) of the first len(segs) trees of a batch."""
    pred, _ = eval_scoring.compact_tree(tree)
    count = len(segs)
    segs = list(segs) + [segs[-1]] * (pred.level_labels.shape[0] - count)
    if resolution == "image":
        sizes = [s.shape[1:] for s in segs]
        pred = eval_scoring.at_resolution(pred, sizes)
        hw, grid = eval_scoring.padded_shape(sizes), None
    else:
        grid = tuple(pred.level_labels.shape[2:])
        hw = grid
    targets = [eval_scoring.bsds_targets(s, grid) for s in segs]
    depth = max(eval_scoring.BSDS_ANNOTATORS, *(t.shape[0] for t in targets))
    return eval_scoring.score_bsds(pred, eval_scoring.pad_maps(targets, hw, depth), count)


def run_setting(
    feats: np.ndarray,
    segs: list[np.ndarray],
    ids: list[str],
    config: PartitionConfig,
    key: int,
    path: Path,
    batch: int,
    resolution: str,
) -> list[dict]:
    """Records of every image (resumed from `path`), one JSON line per image."""
    done = read_records(path)
    have = {r["name"] for r in done}
    path.parent.mkdir(parents=True, exist_ok=True)
    compiled = False
    for start in range(0, len(ids), batch):
        names = ids[start : start + batch]
        if all(n in have for n in names):
            continue
        chunk = feats[start : start + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
        if not compiled:
            jax.block_until_ready(partition(padded, config, jax.random.key(key)).labels)
            compiled = True
        t0 = time.perf_counter()
        tree = jax.tree.map(np.asarray, partition(padded, config, jax.random.key(key)))
        seconds = (time.perf_counter() - t0) / batch
        records = score_batch(tree, segs[start : start + batch], resolution)
        with path.open("a") as f:
            for name, rec in zip(names, records, strict=False):
                f.write(json.dumps(dict(name=name, seconds=seconds) | rec) + "\n")
        done += [dict(name=n, seconds=seconds) | r for n, r in zip(names, records, strict=False)]
    order = {n: i for i, n in enumerate(ids)}
    return sorted((r for r in done if r["name"] in order), key=lambda r: order[r["name"]])


def summary(records: list[dict]) -> dict[str, float]:
    """Dataset means: Best, NMCovering, ODS, OIS, nodes, s/img."""
    acc = eval_scoring.bsds_accumulator(records).summary()
    nm = eval_scoring.bsds_nm_covering(records)
    return dict(
        best=acc["best"],
        nm=nm["nm_covering"],
        ods=acc["ods"],
        ois=acc["ois"],
        nodes=acc["mean_nodes"],
        seconds=float(np.mean([r["seconds"] for r in records])),
    )


def markdown(rows: dict[str, list[dict[str, float]]], title: str) -> str:
    """One row per setting: mean over keys ± spread (max - min) of each metric."""
    lines = [
        title,
        "",
        "| setting | " + " | ".join(HEADERS) + " | s/img |",
        "|---" * (len(HEADERS) + 2) + "|",
    ]
    for name, per_key in rows.items():
        cells = []
        for metric in METRICS:
            values = np.array([s[metric] for s in per_key])
            fmt = ".1f" if metric == "nodes" else ".4f"
            cells.append(f"{values.mean():{fmt}} ±{np.ptp(values):{fmt}}")
        cells.append(f"{np.mean([s['seconds'] for s in per_key]):.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="train", choices=("train", "val"))
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--keys", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--resolution", default="image", choices=("image", "patch"))
    parser.add_argument("--setting", action="append", default=[], help="NAME:FIELD=VALUE,...")
    parser.add_argument("--cache-dir", type=Path, default=bsds_data.CACHE_DIR)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    settings = dict(parse_setting(s) for s in args.setting or ["default:"])
    ids, feats = bsds_data.bsds_features(args.split, args.images, args.size, args.cache_dir)
    segs = bsds_data.segmentations(args.split, ids)
    ident = dict(
        split=args.split,
        size=args.size,
        images=len(ids),
        resolution=args.resolution,
        batch=args.batch,
    )
    rows = {}
    for name, config in settings.items():
        rows[name] = []
        for key in args.keys:
            t0 = time.perf_counter()
            path = records_path(args.out, name, config, key, ident)
            recs = run_setting(feats, segs, ids, config, key, path, args.batch, args.resolution)
            rows[name].append(summary(recs))
            s = rows[name][-1]
            print(
                f"{name} key {key}: Best {s['best']:.4f} NM {s['nm']:.4f} ODS {s['ods']:.4f} "
                f"OIS {s['ois']:.4f} nodes {s['nodes']:.1f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    title = (
        f"BSDS500 {args.split}, {len(ids)} images, {args.size} px "
        f"(N = {feats.shape[1] * feats.shape[2]}), {args.resolution}-resolution scores, "
        f"keys {args.keys} (mean ±spread = max - min over keys)"
    )
    table = markdown(rows, title)
    print("\n" + table)
    if args.markdown is not None:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
