"""Tree quality of named partitioner settings on BSDS500, with the spread of PRNG keys.

Each setting is `NAME:FIELD=VALUE,...`: PartitionConfig overrides of the default, or of the
paper's stage A when the list starts with `@paper` (`PartitionConfig.paper()`), e.g.
`paper:@paper`, `k48:stage_a_k=48,lanczos_iters=128`; the quality levers beyond the
partitioner are items of the same list: `refine=crf|guided` (leaves refined at image
resolution by the dense CRF or the guided filter), `crf.FIELD=VALUE` / `guided.FIELD=VALUE`
(CRFConfig / GuidedConfig overrides, implying that refinement), `features=SPEC` (the
backbone features: `keys` for the last block's keys instead of the tokens, `block09` for
block 9's output, or a mix `tokens+block09:0.5`, each part row-normalised and weighted;
without it the package's default, `features.DEFAULT_FEATURES`, or with `@paper` the
paper's tokens; the refinement is none unless named),
`colour=W` (`features.patch_colour`: each patch's mean CIELAB colour, centred and scaled
per image, joined to the features with weight W: `features.join_features`), `size=PIXELS`
(input size; features cached by `bsds_data.py`) and `stride=PIXELS` (the patch embedding's
stride, the "stride trick" of overlapping patches: a grid of (size - 14) / stride + 1
patches per side), e.g. `gf:guided.radius=16`, `k560:size=560,refine=crf`,
`mix:features=tokens+block09:0.5,colour=0.5`, `s7:stride=7`. Every setting runs under each
PRNG key on the cached default-backbone features of the first `--images` images of the
split (`bsds_data.py`), in fixed batches of `--batch` images (a short last batch padded with
copies), and its trees are scored against the human segmentations with
the project's metrics exactly as `hiseg evaluate` scores them (`eval_scoring`: image
resolution by default, nearest-upsampled labels, on a `stride=` grid by nearest patch centre
(`tree.upsample_labels`; the refinements' unaries still stretch the grid over the image);
`--resolution patch` samples the GT at patch centres, without `stride=`):
Best (area-weighted covering of the best node per segment), NMCovering, ODS / OIS (one tree
level for the dataset / per image) and the node count. Per-image records are appended to
`<out>/<setting>__<hash>__key<k>.jsonl` as batches finish, so an interrupted sweep resumes
where it stopped (the hash covers the config, split, size, image count and resolution);
trees are kept under `<out>/trees/`, so settings that differ only in their refinement
partition once.

    .venv/bin/python benchmarks/partition_sweep.py --split train --size 448 --images 200
        --keys 0 1 2 --setting paper:@paper --setting default: [--markdown table.md]

The table gives, per setting, the mean over keys of each dataset mean and, beside it, the
spread (max - min over keys); s/img is the partitioner's wall time per image (compile
excluded, batch `--batch`, noisy on a shared machine), refine s/img the median per image of
the refinement (one image at a time, as `hiseg evaluate` runs it; the median leaves out the
compilations of new leaf counts and image shapes).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bsds_data  # noqa: E402

from hiseg_jax.crf.dense_crf import CRFConfig, crf_level_labels  # noqa: E402
from hiseg_jax.crf.guided import GuidedConfig, guided_level_labels  # noqa: E402
from hiseg_jax.evaluation import scoring as eval_scoring  # noqa: E402
from hiseg_jax.features import DEFAULT_FEATURES, PAPER_FEATURES, feature_parts  # noqa: E402
from hiseg_jax.spectral.config import PartitionConfig  # noqa: E402
from hiseg_jax.spectral.partition import partition  # noqa: E402
from hiseg_jax.tree import Tree  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "partition_sweep"
METRICS = ("best", "nm", "ods", "ois", "nodes")
HEADERS = ("Best", "NMCovering", "ODS", "OIS", "nodes")
REFINERS = {"crf": CRFConfig, "guided": GuidedConfig}
REFINE_FUNCTIONS = {CRFConfig: crf_level_labels, GuidedConfig: guided_level_labels}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of the sweep: partitioner settings, the refinement of the leaves at image
    resolution (None: nearest upsampling) and the input (feature kind, input size; size
    None: the command's --size)."""

    name: str
    config: PartitionConfig
    refine: CRFConfig | GuidedConfig | None = None
    features: str = DEFAULT_FEATURES
    size: int | None = None
    stride: int | None = None


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
        kwargs[field] = _value(getattr(base, field), value)
    if paper and "n_parts" in kwargs and "stage_a_k" not in kwargs:
        kwargs["stage_a_k"] = kwargs["n_parts"]
    return name or "default", dataclasses.replace(base, **kwargs)


def _value(default: object, value: str) -> object:
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes")
    return type(default)(value)


def parse_full_setting(text: str) -> Setting:
    """`parse_setting`'s syntax plus the sweep's own items: `refine=crf|guided|none`,
    `crf.FIELD=VALUE` / `guided.FIELD=VALUE` (CRFConfig / GuidedConfig overrides; they
    imply that refinement), `features=SPEC` (`features.feature_parts`; default the
    package's `DEFAULT_FEATURES`, the paper's tokens after `@paper`), `colour=W` (adds
    `+colour:W` to the features), `size=PIXELS`, `stride=PIXELS`."""
    name, _, assignments = text.partition(":")
    rest, extra = [], {}
    for item in (a for a in assignments.split(",") if a):
        field, _, value = item.partition("=")
        if field in ("refine", "features", "colour", "size", "stride") or (
            field.split(".")[0] in REFINERS
        ):
            extra[field] = value
        else:
            rest.append(item)
    name, config = parse_setting(f"{name}:{','.join(rest)}")
    refine = extra.pop("refine", None)
    prefixes = {f.split(".")[0] for f in extra if "." in f}
    if refine is None and prefixes:
        refine = prefixes.pop()
    if refine not in (None, "none", *REFINERS) or prefixes - {refine}:
        raise SystemExit(f"refine must be one of none, {', '.join(REFINERS)} in {text!r}")
    refiner = None
    if refine in REFINERS:
        cls = REFINERS[refine]
        base = cls()
        kwargs = {}
        for field, value in extra.items():
            if field.startswith(f"{refine}."):
                attr = field.split(".", 1)[1]
                if not hasattr(base, attr):
                    raise SystemExit(f"unknown {cls.__name__} field {attr!r} in {text!r}")
                kwargs[attr] = _value(getattr(base, attr), value)
        refiner = cls(**kwargs)
    paper = assignments.split(",")[0] == "@paper"
    features = extra.get("features", PAPER_FEATURES if paper else DEFAULT_FEATURES)
    if "colour" in extra:
        features += f"+colour:{float(extra['colour'])}"
    try:
        feature_parts(features)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    size = int(extra["size"]) if "size" in extra else None
    stride = int(extra["stride"]) if "stride" in extra else None
    return Setting(name, config, refiner, features, size, stride)


def digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def records_path(out: Path, setting: Setting, key: int, ident: dict) -> Path:
    """Records file of a setting under a key; the hash covers everything that changes them
    (settings without refinement on tokens keep the hash of the partitioner-only sweep)."""
    fields = dataclasses.asdict(setting.config) | ident
    if setting.refine is not None:
        fields["refine"] = [type(setting.refine).__name__, dataclasses.asdict(setting.refine)]
    if setting.features != "tokens":
        fields["features"] = setting.features
    return out / f"{setting.name}__{digest(fields)}__key{key}.jsonl"


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


def batch_trees(
    feats: np.ndarray, config: PartitionConfig, key: int, path: Path, compile_first: bool
) -> tuple[Tree, float]:
    """The trees of one padded batch and the partitioner's seconds per image, from `path`
    when an earlier setting with the same partitioner computed them (written otherwise)."""
    if path.is_file():
        data = np.load(path)
        arrays = {f: data[f] for f in ("labels", "parent", "depth", "is_leaf", "valid", "parts")}
        return Tree(**arrays, grid=tuple(int(g) for g in data["grid"])), float(data["seconds"])
    if compile_first:
        jax.block_until_ready(partition(feats, config, jax.random.key(key)).labels)
    t0 = time.perf_counter()
    tree = jax.tree.map(np.asarray, partition(feats, config, jax.random.key(key)))
    seconds = (time.perf_counter() - t0) / len(feats)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    arrays = {f.name: getattr(tree, f.name) for f in dataclasses.fields(Tree) if f.name != "grid"}
    np.savez(tmp, **arrays, grid=np.asarray(tree.grid), seconds=seconds)
    tmp.replace(path)
    return tree, seconds


def score_batch(
    tree: Tree,
    segs: Sequence[np.ndarray],
    resolution: str,
    refine: tuple[Callable, Sequence[np.ndarray], np.ndarray, object] | None = None,
    patch_stride: tuple[int, int] = (1, 1),
) -> tuple[list[dict], list[float]]:
    """BSDS records (eval_scoring) of the first len(segs) trees of a batch, and each
    image's refinement seconds (0 without one; compilations included). `refine`:
    (function, images, features, config), `function(image, features[b], level_labels[b],
    config)` as `crf_level_labels`. `patch_stride`: the backbone's (patch, stride), for
    labels upsampled by patch centre (`tree.upsample_labels`)."""
    pred, _ = eval_scoring.compact_tree(tree)
    count = len(segs)
    refined, seconds = [], [0.0] * count
    if refine is not None:
        function, images, feats, config = refine
        for b in range(count):
            t0 = time.perf_counter()
            refined.append(function(images[b], feats[b], pred.level_labels[b], config))
            seconds[b] = time.perf_counter() - t0
    segs = list(segs) + [segs[-1]] * (pred.level_labels.shape[0] - count)
    if resolution == "image":
        sizes = [s.shape[1:] for s in segs]
        pred = eval_scoring.at_resolution(pred, sizes, refined, patch_stride)
        hw, grid = eval_scoring.padded_shape(sizes), None
    else:
        grid = tuple(pred.level_labels.shape[2:])
        hw = grid
    targets = [eval_scoring.bsds_targets(s, grid) for s in segs]
    depth = max(eval_scoring.BSDS_ANNOTATORS, *(t.shape[0] for t in targets))
    return eval_scoring.score_bsds(pred, eval_scoring.pad_maps(targets, hw, depth), count), seconds


class Data(NamedTuple):
    """A split's inputs: image ids, features [B, h, w, E], human segmentations, and (for
    refinement; None otherwise) the images at their own size."""

    ids: list[str]
    feats: np.ndarray
    segs: list[np.ndarray]
    images: list[np.ndarray] | None


def run_setting(
    data: Data,
    setting: Setting,
    key: int,
    path: Path,
    tree_dir: Path,
    batch: int,
    resolution: str,
) -> list[dict]:
    """Records of every image (resumed from `path`), one JSON line per image; trees are
    shared through `tree_dir` by the settings that differ only in their refinement."""
    done = read_records(path)
    have = {r["name"] for r in done}
    path.parent.mkdir(parents=True, exist_ok=True)
    compiled = False
    refiner = None if setting.refine is None else REFINE_FUNCTIONS[type(setting.refine)]
    for start in range(0, len(data.ids), batch):
        names = data.ids[start : start + batch]
        if all(n in have for n in names):
            continue
        chunk = data.feats[start : start + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
        tree_path = tree_dir / f"key{key}" / f"{start:05d}.npz"
        cached = tree_path.is_file()
        tree, seconds = batch_trees(padded, setting.config, key, tree_path, not compiled)
        compiled = compiled or not cached
        refine = None
        if refiner is not None:
            refine = (refiner, data.images[start : start + batch], chunk, setting.refine)
        patch_stride = (bsds_data.PATCH, setting.stride or bsds_data.PATCH)
        records, refine_seconds = score_batch(
            tree, data.segs[start : start + batch], resolution, refine, patch_stride
        )
        new = [
            dict(name=n, seconds=seconds, refine_seconds=t) | r
            for n, t, r in zip(names, refine_seconds, records, strict=True)
        ]
        with path.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in new)
        done += new
    order = {n: i for i, n in enumerate(data.ids)}
    return sorted((r for r in done if r["name"] in order), key=lambda r: order[r["name"]])


def summary(records: list[dict]) -> dict[str, float]:
    """Dataset means: Best, NMCovering, ODS, OIS, nodes, s/img (partitioner), and the
    median refinement seconds per image (the median leaves out the compilations)."""
    acc = eval_scoring.bsds_accumulator(records).summary()
    nm = eval_scoring.bsds_nm_covering(records)
    return dict(
        best=acc["best"],
        nm=nm["nm_covering"],
        ods=acc["ods"],
        ois=acc["ois"],
        nodes=acc["mean_nodes"],
        seconds=float(np.mean([r["seconds"] for r in records])),
        refine=float(np.median([r.get("refine_seconds", 0.0) for r in records])),
    )


def markdown(rows: dict[str, list[dict[str, float]]], title: str) -> str:
    """One row per setting: mean over keys ± spread (max - min) of each metric."""
    lines = [
        title,
        "",
        "| setting | " + " | ".join(HEADERS) + " | s/img | refine s/img |",
        "|---" * (len(HEADERS) + 3) + "|",
    ]
    for name, per_key in rows.items():
        cells = []
        for metric in METRICS:
            values = np.array([s[metric] for s in per_key])
            fmt = ".1f" if metric == "nodes" else ".4f"
            cells.append(f"{values.mean():{fmt}} ±{np.ptp(values):{fmt}}")
        cells.append(f"{np.mean([s['seconds'] for s in per_key]):.2f}")
        cells.append(f"{np.mean([s['refine'] for s in per_key]):.2f}")
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
    settings = [parse_full_setting(s) for s in args.setting or ["default:"]]
    if args.resolution == "patch" and any(s.refine is not None for s in settings):
        raise SystemExit("refinement (refine=, crf., guided.) needs --resolution image")
    if args.resolution == "patch" and any(s.stride is not None for s in settings):
        raise SystemExit("stride= needs --resolution image (GT samples tile the image)")
    rows, inputs = {}, {}
    for setting in settings:
        size = setting.size or args.size
        source = (setting.features, size, setting.stride)
        if source not in inputs:
            inputs[source] = bsds_data.spec_features(
                args.split, args.images, size, setting.features, args.cache_dir, setting.stride
            )
        ids, feats = inputs[source]
        segs = bsds_data.segmentations(args.split, ids)
        images = bsds_data.load_images(args.split, ids) if setting.refine is not None else None
        data = Data(ids, feats, segs, images)
        ident = dict(
            split=args.split,
            size=size,
            images=len(ids),
            resolution=args.resolution,
            batch=args.batch,
        ) | ({} if setting.stride is None else dict(stride=setting.stride))
        rows[setting.name] = []
        for key in args.keys:
            t0 = time.perf_counter()
            path = records_path(args.out, setting, key, ident)
            trees = dataclasses.asdict(setting.config) | ident | dict(features=setting.features)
            tree_dir = args.out / "trees" / digest(trees)
            recs = run_setting(data, setting, key, path, tree_dir, args.batch, args.resolution)
            rows[setting.name].append(summary(recs))
            s = rows[setting.name][-1]
            print(
                f"{setting.name} key {key}: Best {s['best']:.4f} NM {s['nm']:.4f} "
                f"ODS {s['ods']:.4f} OIS {s['ois']:.4f} nodes {s['nodes']:.1f} "
                f"s/img {s['seconds']:.2f} refine {s['refine']:.2f} "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
    title = (
        f"BSDS500 {args.split}, {args.images} images, {args.size} px unless the setting says "
        f"size=, {args.resolution}-resolution scores, keys {args.keys} "
        "(mean ±spread = max - min over keys)"
    )
    table = markdown(rows, title)
    print("\n" + table)
    if args.markdown is not None:
        args.markdown.write_text(table + "\n")


if __name__ == "__main__":
    main()
