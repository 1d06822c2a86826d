"""The report of `hiseg evaluate`: result tables in the paper's format (docs/metrics.md), the
software and machine that produced them, written as `report.md` and `report.json`.

Scores are printed in percent with one decimal, as the paper's tables; `report.json` keeps
the fractions. Every covering row carries the mean number of tree nodes (candidate regions):
an unweighted covering rewards sheer node count (docs/metrics.md, "Covering").
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import jax

from hiseg_jax import __version__
from hiseg_jax.files import AnyPath, write_text

REPORT_FILES = ("report.md", "report.json")
# How a refinement (settings "refine" "method", `crf.refine`) is named in titles and notes.
REFINED = {"guided": "w guided filter", "crf": "w CRF"}
REFINERS = {"guided": "guided filter", "crf": "dense CRF"}
_PACKAGES = ("jax", "jaxlib", "flax", "numpy", "scipy", "tensorflow-datasets", "array-record")


def _git() -> dict[str, Any] | None:
    """Commit of the git checkout the running package lives in, and whether tracked files
    differ from it; None for an installed package (its files are tracked by no checkout)."""
    package = Path(str(importlib.resources.files("hiseg_jax")))
    try:
        run = lambda *a: subprocess.run(
            ["git", "-C", str(package), *a], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        run("ls-files", "--error-unmatch", "__init__.py")  # this very package is tracked
        return dict(
            commit=run("rev-parse", "HEAD"),
            dirty=bool(run("status", "--porcelain", "--untracked-files=no")),
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """{"software": versions and git commit, "machine": CPU, cores, accelerator devices}."""
    versions = {"python": platform.python_version(), "hiseg_jax": __version__}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    machine = dict(
        cpu=_cpu_model(),
        cores=os.cpu_count(),
        platform=platform.platform(),
        devices=[f"{d.platform}:{d.device_kind}" for d in jax.devices()],
    )
    return dict(software=versions | {"git": _git()}, machine=machine)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: (
        "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    )
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


def _level_label(name: str, hierarchical: bool) -> str:
    if name == "all":
        return "T_gt (all levels)" if hierarchical else "all classes"
    return name.replace("depth", "depth ")


def results_table(report: dict[str, Any]) -> str:
    """The dataset's rows as a Markdown table (empty results: a one-line note)."""
    results = report["results"]
    if not results:
        return "(no image was scored)"
    if report["kind"] == "bsds":
        nm = results["nm"]
        header = ["images", "nodes", "Best", "ODS", "OIS", "NMCovering"]
        row = [
            str(results["images"]),
            f"{results['mean_nodes']:.1f}",
            _pct(results["best"]),
            f"{_pct(results['ods'])} (level {results['ods_level']})",
            _pct(results["ois"]),
            _pct(nm.get("nm_covering")),
        ]
        return _table(header, [row])
    levels = [k for k, v in results.items() if isinstance(v, dict) and k != "hungarian"]
    hierarchical = len(levels) > 1
    header = [
        "level",
        "images",
        "classes",
        "mIoU",
        "pAcc",
        "mAcc",
        "fIoU",
        "NMCovering",
        "NHCovering",
        "nodes",
    ]
    rows = []
    for name in levels:
        r = results[name]
        rows.append(
            [
                _level_label(name, hierarchical),
                str(r["images"]),
                str(r.get("classes", 0)),
                *(
                    _pct(r.get(k))
                    for k in ("miou", "pacc", "macc", "fiou", "nm_covering", "nh_covering")
                ),
                f"{results['mean_nodes']:.1f}",
            ]
        )
    table = _table(header, rows)
    if "hungarian" in results:
        hungarian = [
            [
                _level_label(name, hierarchical),
                str(r["classes"]),
                str(r["clusters"]),
                str(r["leaves"]),
                *(_pct(r[k]) for k in ("miou", "pacc", "macc", "fiou")),
            ]
            for name, r in results["hungarian"].items()
        ]
        table += "\n\nHungarian matching (dataset k-means of the tree leaves):\n\n" + _table(
            ["level", "classes", "clusters", "leaves", "mIoU", "pAcc", "mAcc", "fIoU"], hungarian
        )
    return table


def _notes(report: dict[str, Any]) -> list[str]:
    settings, run = report["settings"], report["run"]
    method = settings["refine"]["method"]
    if method != "none":
        resolution = (
            f"image, {REFINED[method]}: the leaves refined by the {REFINERS[method]} on "
            "every image at its own size (docs/method.md section 6), the inner nodes "
            "following them"
        )
    elif settings["resolution"] == "image":
        resolution = "image: predictions nearest-upsampled to every image's own size"
    else:
        resolution = "patch: ground truth nearest-sampled at the patch centres"
    notes = [f"Resolution: {resolution}."]
    if report["kind"] == "bsds":
        notes.append(
            "Best / ODS / OIS: area-weighted segmentation covering of the human "
            "segmentations (mean over annotators, then images); ODS / OIS pick one "
            "tree level per dataset / per image. NMCovering: unweighted mean over "
            "each annotator's segments. nodes: mean tree nodes (root excluded)."
        )
    else:
        notes.append(
            "Semantic scores: maximum-overlap matching of every ground-truth "
            "class region to one tree node per image (many-to-one). NHCovering is "
            "defined on the whole ground-truth hierarchy (T_gt). nodes: mean tree "
            "nodes (root excluded). NFCovering: not reported (the dataset builders "
            "carry no instance ground truth)."
        )
    if "hungarian" in report["results"]:
        notes.append(
            "Hungarian: the leaves of all trees (mean backbone features, "
            "L2-normalised) k-means clustered into as many clusters as classes seen, "
            "then one-to-one assigned to classes over the dataset (the peers' "
            "protocol); only the leaves count, not the hierarchy."
        )
    scope = "all" if run["complete"] else "NOT all"
    notes.append(
        f"Images: {run['scored']} scored, {run['skipped']} skipped, of "
        f"{run['split_images']} in the split ({scope} of the split"
        + (f", limit {run['limit']}" if run["limit"] else "")
        + ")."
    )
    return notes


def format_report(report: dict[str, Any]) -> str:
    """`report.md`: the table, how to read it, the exact settings, software and machine."""
    settings, run = report["settings"], report["run"]
    title = f"hiseg evaluate: {settings['dataset']} {settings['split']}"
    if settings["refine"]["method"] != "none":
        title += f" ({REFINED[settings['refine']['method']]})"
    skipped = [f"- {s['name']} (index {s['index']}): {s['error']}" for s in run["skipped_images"]]
    parts = [
        f"# {title}",
        "",
        f"Command: `{report['command']}`" if report["command"] else "",
        "",
        results_table(report),
        "",
        *(f"- {n}" for n in _notes(report)),
        "",
        f"Wall time of the last invocation: {run['wall_seconds']:.1f} s; segmentation and "
        f"scoring time summed over all images: {run['image_seconds']:.1f} s "
        f"(batch size {run['batch_size']}).",
        "",
    ]
    if skipped:
        parts += ["## Skipped images", "", *skipped, ""]
    for heading, key in (
        ("Settings", "settings"),
        ("Software", "software"),
        ("Machine", "machine"),
    ):
        parts += [f"## {heading}", "", "```json", json.dumps(report[key], indent=2), "```", ""]
    return "\n".join(parts)


def write_report(out: AnyPath, report: dict[str, Any]) -> None:
    """`out/report.md` and `out/report.json`, each written atomically."""
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "report.md", format_report(report))
