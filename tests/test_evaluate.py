"""The evaluation runner: the per-batch result files, tree compaction and padding (scores
must not change), records -> accumulators, Hungarian matching, and whole runs on a fake
dataset (one record per image, report, skipped image, resume after an interruption or a
killed write, totals equal to the metrics module's direct computation), with and without
the dense CRF."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from evaluate_cases import BAD_LABELS, BROKEN, SIZE, SMALL, make_voc_pairs
from segment_cases import check_hierarchy

from hiseg_jax.api import segment
from hiseg_jax.crf.dense_crf import CRFConfig
from hiseg_jax.crf.guided import GuidedConfig
from hiseg_jax.datasets import load, read_example
from hiseg_jax.evaluation import hungarian as eval_hungarian
from hiseg_jax.evaluation import result_files
from hiseg_jax.evaluation import runner as evaluation
from hiseg_jax.evaluation import scoring as eval_scoring
from hiseg_jax.hierarchies import index_label_space, label_space, load_hierarchy, parse_hierarchy
from hiseg_jax.images import ImageLoadError
from hiseg_jax.metrics import Accumulator, TreePrediction, evaluate_batch, evaluate_bsds_batch
from hiseg_jax.tree import Tree, upsample_labels

# --------------------------------------------------------------------------------------
# The result files.


def test_batch_files_round_trip(tmp_path):
    """Each batch is one whole file named by process and first index; reading gives one
    record per index, sorted, whatever the order of the files; a killed write's hidden
    temporary file is not read."""
    assert result_files.read_records(tmp_path) == []
    first = [{"index": i, "x": [i / 2, None]} for i in (4, 6)]
    second = [{"index": i, "name": str(i)} for i in (1, 3)]
    path = result_files.write_batch(tmp_path, 1, first)
    assert path == tmp_path / "results" / "p1-00000004.jsonl"
    assert path.read_text() == '{"index":4,"x":[2.0,null]}\n{"index":6,"x":[3.0,null]}\n'
    result_files.write_batch(tmp_path, 0, second)
    (tmp_path / "results" / ".p0-00000008.jsonl.x1y2.part").write_text('{"index": 8, "x"')
    assert result_files.read_records(tmp_path) == [second[0], second[1], *first]
    assert [p.name for p in result_files.batch_files(tmp_path)] == [
        "p0-00000001.jsonl",
        "p1-00000004.jsonl",
    ]


def test_corrupt_batch_file_raises_naming_it(tmp_path):
    path = result_files.write_batch(tmp_path, 0, [{"index": 0}])
    path.write_text('{"index": 0}\n{"index": \n')
    with pytest.raises(result_files.ResultFilesError, match=r"p0-00000000.jsonl: line 2"):
        result_files.read_records(tmp_path)
    path.write_text('{"index": 0}\n[1, 2]\n')
    with pytest.raises(result_files.ResultFilesError, match="not a record with an image index"):
        result_files.read_records(tmp_path)


def test_batch_files_refuse_nan(tmp_path):
    with pytest.raises(ValueError):
        result_files.write_batch(tmp_path, 0, [{"index": 0, "x": float("nan")}])
    assert result_files.read_records(tmp_path) == []


# --------------------------------------------------------------------------------------
# Compaction, padding and records leave every score unchanged.


def scattered_trees() -> Tree:
    """Two trees on a 4 x 5 grid over M = 13 slots, valid nodes at scattered slots."""
    grid, slots = (4, 5), 13
    cols = np.arange(20) % 5
    rows = np.arange(20) // 5
    labels = np.zeros((2, 3, 20), np.int32)
    parent = np.full((2, slots), -1, np.int32)
    depth = np.zeros((2, slots), np.int32)
    valid = np.zeros((2, slots), bool)
    # image 0: root 0 -> {3, 7}; 7 -> {9, 12}; 3 stops.
    labels[0, 1] = np.where(cols < 2, 3, 7)
    labels[0, 2] = np.where(cols < 2, 3, np.where(rows < 2, 9, 12))
    for m, p, d in ((3, 0, 1), (7, 0, 1), (9, 7, 2), (12, 7, 2)):
        parent[0, m], depth[0, m], valid[0, m] = p, d, True
    # image 1: root 0 -> {1, 5, 11}, no deeper split.
    labels[1, 1] = labels[1, 2] = np.choose(np.minimum(cols // 2, 2), [1, 5, 11])
    for m in (1, 5, 11):
        parent[1, m], depth[1, m], valid[1, m] = 0, 1, True
    valid[:, 0] = True
    is_leaf = valid & ~np.stack([np.isin(np.arange(slots), parent[b]) for b in range(2)])
    return Tree(labels, parent, depth, is_leaf, valid, np.zeros((2, 20), np.int32), grid=grid)


def test_compact_tree_renumbers_in_slot_order():
    tree = scattered_trees()
    pred, slot_ids = eval_scoring.compact_tree(tree)
    assert pred.node_valid.shape == (2, eval_scoring.MIN_BUCKET)
    np.testing.assert_array_equal(slot_ids[0, :6], [0, 3, 7, 9, 12, -1])
    np.testing.assert_array_equal(slot_ids[1, :5], [0, 1, 5, 11, -1])
    np.testing.assert_array_equal(pred.node_parent[0, :5], [-1, 0, 0, 2, 2])
    np.testing.assert_array_equal(pred.node_depth[0, :5], [0, 1, 1, 2, 2])
    # every node keeps its patches: new id j at depth d <=> old slot slot_ids[j] there
    old = np.asarray(tree.labels).reshape(2, 3, 4, 5)
    for b in range(2):
        np.testing.assert_array_equal(slot_ids[b][pred.level_labels[b]], old[b])


def random_gt(rng, shape, num_labels) -> np.ndarray:
    gt = rng.integers(0, num_labels, shape).astype(np.int32)
    gt[rng.random(shape) < 0.1] = -1
    return gt


def test_padded_compact_scores_equal_direct_scores():
    """Each image scored alone at its own size with the full tree == the padded batch of
    compacted trees; node ids in records are the original slots."""
    tree = scattered_trees()
    space = index_label_space([-1, 0, 0, 1], ignore_values=(-1,))  # a small GT hierarchy
    rng = np.random.default_rng(3)
    sizes = [(9, 11), (7, 13)]
    gts = [random_gt(rng, s, 4) for s in sizes]
    pred, slot_ids = eval_scoring.compact_tree(tree)
    pred = eval_scoring.at_resolution(pred, sizes)
    assert pred.level_labels.shape[-2:] == (32, 32)
    hw = eval_scoring.padded_shape(sizes)
    records = eval_scoring.score_regions(pred, slot_ids, eval_scoring.pad_maps(gts, hw), space, 2)
    direct = Accumulator.for_regions(space)
    for b, (size, gt) in enumerate(zip(sizes, gts, strict=True)):
        full = np.asarray(upsample_labels(np.asarray(tree.labels[b]).reshape(3, 4, 5), size))
        one = TreePrediction(
            full[None],
            np.asarray(tree.valid[b : b + 1]),
            np.asarray(tree.depth[b : b + 1]),
            np.asarray(tree.parent[b : b + 1]),
        )
        scores = evaluate_batch(one, gt[None], space)
        direct.add(scores, [f"img{b}"])
        present = np.flatnonzero(np.asarray(scores.matches.node[0]) >= 0)
        assert records[b]["gt"] == present.tolist()
        assert records[b]["match"] == np.asarray(scores.matches.node[0])[present].tolist()
        assert records[b]["nm_covering"] == np.asarray(scores.nm_covering[0]).tolist()
    for b, r in enumerate(records):
        r["name"] = f"img{b}"
    rebuilt = eval_scoring.region_accumulator(records, space)
    assert rebuilt.summary() == direct.summary()
    np.testing.assert_array_equal(rebuilt.totals["tp"], direct.totals["tp"])


def test_bsds_scores_and_nm_covering():
    tree = scattered_trees()
    rng = np.random.default_rng(4)
    sizes = [(8, 10), (8, 10)]
    segs = [rng.integers(1, 6, (3, *s)) for s in sizes]  # 3 annotators, ids from 1
    segs[1] = segs[1][:2]  # image 1 has two annotators only
    targets = [eval_scoring.bsds_targets(s, None) for s in segs]
    pred, _ = eval_scoring.compact_tree(tree)
    pred = eval_scoring.at_resolution(pred, sizes)
    padded = eval_scoring.pad_maps(targets, (32, 32), eval_scoring.BSDS_ANNOTATORS)
    records = eval_scoring.score_bsds(pred, padded, 2)
    assert [r["n_annotators"] for r in records] == [3, 2]
    assert [len(r["nm_covering"]) for r in records] == [3, 2]
    space = index_label_space(np.full(eval_scoring.BSDS_REGIONS, -1), ignore_values=(-1,))
    for b, r in enumerate(records):  # NMCovering of each annotator, scored alone
        full = np.asarray(upsample_labels(np.asarray(tree.labels[b]).reshape(3, 4, 5), sizes[b]))
        one = TreePrediction(
            full[None],
            np.asarray(tree.valid[b : b + 1]),
            np.asarray(tree.depth[b : b + 1]),
            np.asarray(tree.parent[b : b + 1]),
        )
        alone = [float(evaluate_batch(one, t[None], space).nm_covering[0, 0]) for t in targets[b]]
        assert r["nm_covering"] == alone
        # the same annotator padding (a float32 mean over that axis), no spatial padding
        own = eval_scoring.pad_maps([targets[b]], sizes[b], eval_scoring.BSDS_ANNOTATORS)
        direct = evaluate_bsds_batch(one, own, eval_scoring.BSDS_REGIONS)
        assert r["best"] == float(direct.best[0])
        assert r["levels"] == np.asarray(direct.levels[0]).tolist()
    summary = eval_scoring.bsds_nm_covering([r | {"name": str(i)} for i, r in enumerate(records)])
    assert summary["nm_covering"] == pytest.approx(
        np.mean([np.mean(r["nm_covering"]) for r in records]), abs=1e-12
    )


# --------------------------------------------------------------------------------------
# Hungarian matching of clustered leaves.

TWO_LEVELS = parse_hierarchy(
    "bg | 0 | background\ncar | - | foreground\ncar/wheel | 2 | foreground\n"
    "car/body | 5 | foreground\nperson | 3 | foreground\n",
    "toy",
)


def test_exclusive_sets():
    assert eval_hungarian.exclusive_sets(label_space(load_hierarchy("voc2012"))) == [0]
    space = label_space(TWO_LEVELS)
    assert [space.set_names[s] for s in eval_hungarian.exclusive_sets(space)] == [
        "depth1",
        "depth2",
    ]


def test_hungarian_recovers_separable_leaves():
    """Leaves whose descriptors sit near one direction per class: k-means finds the classes,
    the assignment is perfect; a leaf holding pixels of two classes costs exactly those."""
    space = label_space(load_hierarchy("voc2012"))  # (image), background, 20 classes
    rng = np.random.default_rng(0)
    label_of_leaf = np.repeat([1, 2, 9, 16], 5)  # background, aeroplane, cat, person
    descriptors = np.eye(8)[np.repeat(np.arange(4), 5)] + 0.01 * rng.normal(size=(20, 8))
    counts = np.zeros((20, space.num_nodes), np.int64)
    counts[np.arange(20), label_of_leaf] = 100
    results = eval_hungarian.hungarian_results(descriptors, counts, space, seed=0)
    assert results == {
        "all": dict(classes=4, clusters=4, leaves=20, miou=1.0, pacc=1.0, macc=1.0, fiou=1.0)
    }
    counts[0, 16] = 50  # a background leaf with 50 person pixels
    results = eval_hungarian.hungarian_results(descriptors, counts, space, seed=0)["all"]
    iou = 500 / 550  # background: 50 FP; person: 50 FN
    assert results["pacc"] == pytest.approx(2000 / 2050)
    assert results["miou"] == pytest.approx((2 + 2 * iou) / 4)
    assert results["macc"] == pytest.approx((3 + 500 / 550) / 4)


# --------------------------------------------------------------------------------------
# Whole runs on a fake dataset with the real weights.


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> tuple[Path, Path]:
    """(raw folder, prepared folder) of the fake VOC dataset."""
    root = tmp_path_factory.mktemp("data")
    return make_voc_pairs(root / "voc"), root / "prepared"


def settings_for(voc, **kw) -> evaluation.EvalSettings:
    """The fake VOC run's settings; no refinement unless `refine` is given (faster)."""
    kw = {"refine": None, **kw}
    return evaluation.EvalSettings(
        dataset="voc2012", data_dir=str(voc[0]), split="val", size=SIZE, partition=SMALL, **kw
    )


def options_for(voc, out, **kw) -> evaluation.RunOptions:
    return evaluation.RunOptions(out=out, batch_size=2, prepared_dir=voc[1], progress=False, **kw)


@pytest.fixture
def scored_batches(monkeypatch) -> list[list[int]]:
    """The dataset indices of every batch the runner segments (appended as they run)."""
    calls: list[list[int]] = []
    real = evaluation.score_batch

    def counting(result, *args):
        calls.append([item.payload.index for item in result.items])
        return real(result, *args)

    monkeypatch.setattr(evaluation, "score_batch", counting)
    return calls


@pytest.fixture(scope="module")
def full_run(voc, default_checkpoint, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("full")
    report = evaluation.evaluate(settings_for(voc), options_for(voc, out))
    return out, report


def test_full_run_records_report_and_skipped_image(full_run):
    out, report = full_run
    assert [p.name for p in result_files.batch_files(out)] == [
        "p0-00000000.jsonl",
        "p0-00000002.jsonl",
        "p0-00000004.jsonl",
    ]
    records = result_files.read_records(out)
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4, 5]
    broken = [r for r in records if "error" in r]
    assert [(r["index"], r["name"]) for r in broken] == [
        (BROKEN, str(BROKEN)),
        (BAD_LABELS, str(BAD_LABELS)),
    ]
    assert broken[0]["error"].startswith("unreadable image: ")
    assert broken[1]["error"].startswith("ground truth: label values not in hierarchy")
    assert "[30]" in broken[1]["error"]
    run = report["run"]
    assert (run["scored"], run["skipped"], run["split_images"], run["complete"]) == (4, 2, 6, True)
    saved = json.loads(out.joinpath("report.json").read_text())
    assert saved["results"] == report["results"]
    assert saved["settings"]["size"] == [SIZE, SIZE]
    assert saved["settings"]["partition"]["n_parts"] == SMALL.n_parts
    assert saved["software"]["jax"] == jax.__version__ and saved["machine"]["cores"] >= 1
    markdown = out.joinpath("report.md").read_text()
    assert "| all classes" in markdown and "2 (index 2)" in markdown
    assert Accumulator.load(out / "accumulator.npz").summary() == report["results"]


def test_totals_equal_direct_metrics(full_run, voc, default_checkpoint):
    """The same trees from `api.segment` (same batches: the runner pads each to 2 with a
    copy), every image scored alone at its own size against its raw GT."""
    _, report = full_run
    source = load("voc2012", voc[0], "val", prepared_dir=voc[1])
    examples = {}
    for i in range(len(source)):
        try:
            examples[i] = read_example(source[i])
        except ImageLoadError:
            continue
    space = label_space(load_hierarchy("voc2012"))
    acc = Accumulator.for_regions(space)
    for batch in ([0, 1], [3, 3], [4, 4]):  # the runner's batches, 2 and 5 skipped
        result = segment(
            [examples[i][1] for i in batch],
            default_checkpoint,
            SIZE,
            batch_size=2,
            key=jax.random.key(0),
            config=SMALL,
            refine=None,
        )
        for b, i in enumerate(dict.fromkeys(batch)):
            name, _, labels = examples[i]
            pred = TreePrediction(
                np.asarray(result.level_labels[b])[None],
                *(
                    np.asarray(getattr(result.tree, k)[b : b + 1])
                    for k in ("valid", "depth", "parent")
                ),
            )
            acc.add(evaluate_batch(pred, labels, space), [name])
    assert acc.summary() == report["results"]


def test_resume_after_limit_recomputes_nothing(full_run, voc, tmp_path, scored_batches):
    out = tmp_path / "run"
    evaluation.evaluate(settings_for(voc), options_for(voc, out, limit=2))
    first = {p.name: p.read_bytes() for p in result_files.batch_files(out)}
    assert list(first) == ["p0-00000000.jsonl"] and scored_batches == [[0, 1]]
    assert len(result_files.read_records(out)) == 2
    with pytest.raises(evaluation.EvaluationError, match="--resume"):
        evaluation.evaluate(settings_for(voc), options_for(voc, out))
    with pytest.raises(evaluation.EvaluationError, match="seed"):
        evaluation.evaluate(settings_for(voc, seed=1), options_for(voc, out, resume=True))
    report = evaluation.evaluate(settings_for(voc), options_for(voc, out, resume=True))
    assert scored_batches == [[0, 1], [3], [4]]  # [2, 3] and [4, 5] without the skipped
    files = result_files.batch_files(out)
    assert len(files) == 3 and {p.name: p.read_bytes() for p in files[:1]} == first
    assert report["results"] == full_run[1]["results"]
    assert report["run"]["complete"]


def test_resume_after_a_killed_write(full_run, voc, tmp_path, scored_batches):
    """Killed while writing the last batch's file: the whole files of the batches before
    and the hidden temporary file of the last one are there; only the last is redone."""
    out = tmp_path / "run"
    (out / "results").mkdir(parents=True)
    shutil.copy(full_run[0] / "settings.json", out)
    *kept, last = result_files.batch_files(full_run[0])
    for path in kept:
        shutil.copy(path, out / "results")
    torn = out / "results" / f".{last.name}.k1ll3d.part"
    torn.write_bytes(last.read_bytes()[:40])
    report = evaluation.evaluate(settings_for(voc), options_for(voc, out, resume=True))
    assert scored_batches == [[4]]
    records = result_files.read_records(out)
    assert records[:4] == result_files.read_records(full_run[0])[:4] and len(records) == 6
    assert report["results"] == full_run[1]["results"]


def test_settings_errors(voc):
    with pytest.raises(ValueError, match="unknown dataset"):
        evaluation.EvalSettings(dataset="nope", data_dir=".", split="val")
    with pytest.raises(ValueError, match="no classes"):
        evaluation.EvalSettings(dataset="bsds500", data_dir=".", split="val", matching="hungarian")
    with pytest.raises(ValueError, match="resolution"):
        settings_for(voc, resolution="pixel")
    with pytest.raises(ValueError, match="the crf refinement works at pixel level"):
        settings_for(voc, resolution="patch", refine=CRFConfig())
    with pytest.raises(ValueError, match="the guided refinement works at pixel level"):
        settings_for(voc, resolution="patch", refine=GuidedConfig())
    # the guided filter is the default: at the patch grid, say refine=None
    with pytest.raises(ValueError, match=r"--refine none, refine=None"):
        evaluation.EvalSettings(dataset="voc2012", data_dir=".", split="val", resolution="patch")
    with pytest.raises(ValueError, match="not a refinement"):
        settings_for(voc, refine="crf")
    with pytest.raises(ValueError, match="exclude"):
        evaluation.RunOptions(out=Path("x"), resume=True, overwrite=True)


# --------------------------------------------------------------------------------------
# The dense CRF ("w CRF"): pixel maps at every image's size, scored as without it.

FAST_CRF = CRFConfig(n_iter=2)  # the paper's kernels, fewer mean-field iterations


@pytest.fixture(scope="module")
def crf_run(voc, default_checkpoint, tmp_path_factory) -> tuple[Path, dict, list, list]:
    """(out, report, at_resolution calls (pred, sizes, refined), predictions scored) of a
    CRF run over the first batch (images 0 and 1)."""
    out = tmp_path_factory.mktemp("crf")
    resolved, scored = [], []
    real_resolution, real_score = eval_scoring.at_resolution, eval_scoring.score_regions

    def at_resolution(pred, sizes, refined=()):
        resolved.append((pred, sizes, refined))
        return real_resolution(pred, sizes, refined)

    def score_regions(pred, *args):
        scored.append(pred)
        return real_score(pred, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(eval_scoring, "at_resolution", at_resolution)
        patch.setattr(eval_scoring, "score_regions", score_regions)
        report = evaluation.evaluate(
            settings_for(voc, refine=FAST_CRF), options_for(voc, out, limit=2)
        )
    return out, report, resolved, scored


def direct_summary(result, examples) -> dict:
    """VOC totals of `api.segment`'s pixel maps scored directly, image by image."""
    space = label_space(load_hierarchy("voc2012"))
    direct = Accumulator.for_regions(space)
    for b, (name, _, labels) in enumerate(examples):
        one = TreePrediction(
            result.level_labels[b][None],
            *(np.asarray(getattr(result.tree, k)[b : b + 1]) for k in ("valid", "depth", "parent")),
        )
        direct.add(evaluate_batch(one, labels, space), [name])
    return direct.summary()


def test_crf_run_scores_pixel_maps(crf_run, full_run, voc, default_checkpoint):
    """CRF-refined maps at each image's size, scored like `api.segment(refine=...)`'s maps
    scored directly; same trees as the plain run, other pixel maps; settings recorded."""
    out, report, resolved, scored = crf_run
    ((patch_pred, sizes, refined),), (pred,) = resolved, scored
    assert sizes == [(60, 80), (80, 60)] and len(refined) == 2
    assert pred.level_labels.shape == (2, SMALL.levels + 1, 96, 96)
    for b, (h, w) in enumerate(sizes):
        maps = pred.level_labels[b]
        np.testing.assert_array_equal(maps[:, :h, :w], refined[b])
        assert (maps[:, :h, :w] >= 0).all() and (maps[:, h:] == -1).all()
        nearest = np.asarray(upsample_labels(patch_pred.level_labels[b], (h, w)))
        assert (refined[b] != nearest).any()  # the CRF moved some pixels
    saved = json.loads(out.joinpath("settings.json").read_text())
    assert saved["refine"] == {"method": "crf", **dataclasses.asdict(FAST_CRF)}
    plain = json.loads(full_run[0].joinpath("settings.json").read_text())
    assert plain["refine"] == {"method": "none"}
    assert "w CRF" in out.joinpath("report.md").read_text()
    records = result_files.read_records(out)
    plain = {r["index"]: r for r in result_files.read_records(full_run[0])}
    for r in records:
        assert all(r[k] == plain[r["index"]][k] for k in ("n_nodes", "leaves", "depth"))
        assert all(0.0 <= v <= 1.0 for v in [*r["iou"], *r["nm_covering"], r["nh_covering"]])
    source = load("voc2012", voc[0], "val", prepared_dir=voc[1])
    examples = [read_example(source[i]) for i in (0, 1)]
    result = segment(
        [image for _, image, _ in examples],
        default_checkpoint,
        SIZE,
        batch_size=2,
        key=jax.random.key(0),
        config=SMALL,
        refine=FAST_CRF,
    )
    assert direct_summary(result, examples) == report["results"]


def test_crf_prediction_stays_nested(crf_run):
    """Every pixel's node at depth d + 1 is a child of its node at depth d, or that same
    node (a leaf carried down); each inner node is the union of its children."""
    (pred,) = crf_run[3]
    for b, (h, w) in enumerate(crf_run[2][0][1]):
        maps = pred.level_labels[b][:, :h, :w]
        parent = pred.node_parent[b]
        for d in range(maps.shape[0] - 1):
            child, above = maps[d + 1], maps[d]
            assert ((child == above) | (parent[child] == above)).all()
        check_hierarchy(maps, parent, pred.node_depth[b], pred.node_valid[b])


def test_guided_run_scores_refined_pixel_maps(full_run, voc, default_checkpoint, tmp_path):
    """The guided filter's maps are what `api.segment(refine=...)` gives, they differ from
    the nearest upsampling, the trees are the plain run's, and the settings say so."""
    guided = GuidedConfig(radius=4)
    report = evaluation.evaluate(
        settings_for(voc, refine=guided), options_for(voc, tmp_path, limit=2)
    )
    saved = json.loads(tmp_path.joinpath("settings.json").read_text())
    assert saved["refine"] == {"method": "guided", **dataclasses.asdict(guided)}
    assert "w guided filter" in tmp_path.joinpath("report.md").read_text()
    records = result_files.read_records(tmp_path)
    plain = {r["index"]: r for r in result_files.read_records(full_run[0])}
    for r in records:
        assert all(r[k] == plain[r["index"]][k] for k in ("n_nodes", "leaves", "depth"))
    source = load("voc2012", voc[0], "val", prepared_dir=voc[1])
    examples = [read_example(source[i]) for i in (0, 1)]
    images = [image for _, image, _ in examples]
    common = dict(batch_size=2, key=jax.random.key(0), config=SMALL)
    result = segment(images, default_checkpoint, SIZE, refine=guided, **common)
    nearest = segment(images, default_checkpoint, SIZE, refine=None, **common)
    assert any(
        (a != b).any() for a, b in zip(result.level_labels, nearest.level_labels, strict=True)
    )
    assert direct_summary(result, examples) == report["results"]


def test_crf_resume_needs_the_same_crf(crf_run, voc):
    out = crf_run[0]
    with pytest.raises(evaluation.EvaluationError, match='refine.method "crf" there, "none"'):
        evaluation.evaluate(settings_for(voc), options_for(voc, out, resume=True))
    with pytest.raises(evaluation.EvaluationError, match="refine.n_iter 2 there, 10 now"):
        evaluation.evaluate(
            settings_for(voc, refine=CRFConfig()), options_for(voc, out, resume=True)
        )
