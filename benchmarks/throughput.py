"""End-to-end throughput of the compiled pipeline vs N and batch size, per stage, with the
NumPy/SciPy reference on the same images side by side.

For every image size (N = (size / 14)^2 patches) and batch size: the compiled end-to-end
step of `hiseg_jax.engine.step` (backbone + partitioner in one program, over every local
device) gives images/s (median of `--repeats` timed calls after compilation and one call;
host work excluded, measured separately as `host s/img`: decode + resize + normalise).
Every time is taken twice: wall clock, and CPU seconds of this process (all its threads).
On a machine shared with other work the wall clock is stretched by the others' load; the
CPU time is not, so per-stage splits, fits and FLOP rates use CPU time.
At the first batch size of each N, the stages are also compiled and timed one by one:
backbone, graph + eigensolver (`partition.affinity` + `spectral_embedding`), k-means
(`parts_of`), stage B (`part_graph` + `stage_b`). XLA's memory analysis of the compiled
step gives its memory (arguments + outputs + temporaries); the process peak RSS is
reported at the end (GPU: the device's peak bytes in use). Backbone FLOPs come from XLA's
cost analysis; the peak they are compared with is a measured 2048^3 matmul (and, on CPU,
the cores x SIMD width x FMA x clock figure from /proc/cpuinfo, a stated assumption).
Time per image of the step and of each stage is fitted as c * N^a over the sizes
(log-log least squares). The reference (`hiseg_jax.spectral.reference`, float64, one image at a
time) runs on the same images' features.

    .venv/bin/python benchmarks/throughput.py                  # quick: a few minutes on CPU
    .venv/bin/python benchmarks/throughput.py --full           # N 1024..6400, batch 1..32
    .venv/bin/python benchmarks/throughput.py --plot-from a.json b.json   # merge, plot

Writes benchmarks/results/throughput.json (gitignored) and throughput.png (images/s vs N,
one line per batch size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from partition_sweep import parse_setting  # benchmarks/ is on sys.path when run as a script

from hiseg_jax.engine.step import make_step
from hiseg_jax.features import backbone_features, cast_floating, preprocess
from hiseg_jax.images import load_image, sample_images
from hiseg_jax.models.vit import ViT, get_config, make_apply
from hiseg_jax.paths import default_checkpoint_path
from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.spectral.partition import affinity, part_graph, parts_of, spectral_embedding, stage_b
from hiseg_jax.spectral.reference import part_graph as reference_part_graph
from hiseg_jax.spectral.reference import (
    reference_graph,
    reference_stage_b,
    stage_a_embedding,
    stage_a_parts,
)
from hiseg_jax.weights.checkpoint import load_backbone

RESULTS = Path(__file__).resolve().parent / "results"
BSDS_VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bsds500" / "images"
STAGES = ("backbone", "graph_eig", "kmeans", "stage_b")
QUICK = dict(sizes=[448, 672], batches=[1, 2], reference_sizes=[448, 672], repeats=2)
FULL = dict(
    sizes=[448, 672, 840, 1120],
    batches=[1, 2, 4, 8, 16, 32],
    reference_sizes=[448, 672, 840, 1120],
    repeats=3,
)


# ----------------------------------------------------------------------------------------
# Machine and peak.


def cpu_model() -> str:
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if "model name" in line]
        if names:
            return names[0]
    return platform.processor() or "unknown CPU"


def cpu_theoretical_peak() -> tuple[float, str]:
    """float32 FLOP/s = cores x SIMD lanes x 2 (FMA) x FMA units x clock, from /proc/cpuinfo.

    Assumes 2 FMA units per core (true of recent Intel/AMD server cores, not all), and the
    clock /proc/cpuinfo reports now (turbo and AVX-512 down-clocking are not modelled).
    """
    flags, mhz = set(), []
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("cpu MHz"):
                mhz.append(float(line.split(":", 1)[1]))
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    cores = os.cpu_count() or 1
    clock = statistics.mean(mhz) * 1e6 if mhz else float("nan")
    peak = cores * lanes * 2 * 2 * clock
    note = (
        f"{cores} cores x {lanes} f32 lanes x 2 (FMA) x 2 FMA units x "
        f"{clock / 1e9:.2f} GHz (assumed, /proc/cpuinfo)"
    )
    return peak, note


def measured_matmul_peak(dtype: Any, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """FLOP per wall-second and per CPU-second of the best n x n @ n x n matmul."""
    a = jax.random.normal(jax.random.key(1), (n, n), dtype)
    b = jax.random.normal(jax.random.key(2), (n, n), dtype)
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    times = [_timed(lambda: mm(a, b).block_until_ready()) for _ in range(repeats)]
    return {clock: 2 * n**3 / min(t[clock] for t in times) for clock in ("wall", "cpu")}


def _timed(fn: Callable[[], Any]) -> dict[str, float]:
    """Wall and CPU seconds (all threads of this process) of one call. CPU time is what
    to compare on a shared machine: other processes' load stretches wall time only."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def _median_time(fn: Callable[[], Any], repeats: int, warm_up: bool = True) -> dict[str, float]:
    if warm_up:
        fn()
    times = [_timed(fn) for _ in range(repeats)]
    return {clock: statistics.median(t[clock] for t in times) for clock in ("wall", "cpu")}


# ----------------------------------------------------------------------------------------
# Inputs.


def load_images(count: int) -> tuple[list[np.ndarray], list[Path], str]:
    """`count` real images (BSDS500 val where present, else the sample images, cycled),
    their files (empty for the samples) and a description."""
    paths = sorted((BSDS_VAL / "val").glob("*.jpg"))[:count]
    if paths:
        images, source = [load_image(p) for p in paths], f"BSDS500 val ({len(paths)} images)"
    else:
        images, source = list(sample_images().values()), "scikit-image samples"
    return [images[i % len(images)] for i in range(count)], paths, source


def host_seconds(paths: list[Path], pictures: list[np.ndarray], size: int, model: ViT) -> float:
    """Median host time per image of decode (when files exist) + resize + normalise."""
    if paths:
        work = [lambda p=p: preprocess([load_image(p)], size, model.config) for p in paths[:4]]
    else:
        work = [lambda im=im: preprocess([im], size, model.config) for im in pictures[:4]]
    return statistics.median(_timed(fn)["wall"] for fn in work)


def load_model(random_weights: bool) -> tuple[ViT, str]:
    path = default_checkpoint_path()
    if path.is_file() and not random_weights:
        return load_backbone(path), path.name
    name = "dinov2_vits14_imgfocus"
    return ViT(get_config(name), rngs=nnx.Rngs(0)), f"{name} with RANDOM weights"


# ----------------------------------------------------------------------------------------
# Per-stage programs (each jitted over a batch, as the fused step runs them).


def stage_programs(
    model: ViT, config: PartitionConfig, dtype: Any, grid: tuple[int, int]
) -> dict[str, Callable]:
    """Stage functions of a batch of h x w patch grids, from the partitioner's public pieces:
    backbone, graph + eigensolver (`affinity`, `spectral_embedding`), k-means (`parts_of`),
    stage B (`part_graph` + `stage_b`)."""
    _, apply = make_apply(model)

    def spectral(x: jax.Array, key: jax.Array) -> jax.Array:
        return spectral_embedding(affinity(x, config), config, key, grid)

    def tree(x: jax.Array, labels: jax.Array, key: jax.Array) -> jax.Array:
        sizes = jax.ops.segment_sum(jnp.ones_like(labels), labels, num_segments=config.n_parts)
        return stage_b(part_graph(x, labels, config), config, key, sizes > 0).valid

    return {
        "backbone": jax.jit(lambda prm, im: backbone_features(apply, prm, im, "tokens", dtype)[0]),
        "graph_eig": jax.jit(jax.vmap(spectral, in_axes=(0, None))),
        "kmeans": jax.jit(jax.vmap(lambda e, k: parts_of(e, config, k, grid), in_axes=(0, None))),
        "stage_b": jax.jit(jax.vmap(tree, in_axes=(0, 0, None))),
    }


def time_stages(
    model: ViT, config: PartitionConfig, dtype: Any, images: np.ndarray, repeats: int
) -> dict[str, Any]:
    """Seconds per batch of each stage, and the backbone's FLOPs per image (XLA)."""
    patch = model.config.patch_size
    grid = (images.shape[1] // patch, images.shape[2] // patch)
    programs = stage_programs(model, config, dtype, grid)
    params = cast_floating(nnx.state(model, nnx.Param), dtype)
    key = jax.random.key(0)
    x = programs["backbone"](params, images)
    b, h, w, e = x.shape
    x = x.reshape(b, h * w, e)
    emb = programs["graph_eig"](x, key)
    labels = programs["kmeans"](emb, key)
    calls = {
        "backbone": lambda: programs["backbone"](params, images).block_until_ready(),
        "graph_eig": lambda: jax.block_until_ready(programs["graph_eig"](x, key)),
        "kmeans": lambda: programs["kmeans"](emb, key).block_until_ready(),
        "stage_b": lambda: programs["stage_b"](x, labels, key).block_until_ready(),
    }
    out: dict[str, Any] = {name: _median_time(calls[name], repeats) for name in STAGES}
    cost = programs["backbone"].lower(params, images).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    out["backbone_flops_per_image"] = float(cost.get("flops", float("nan"))) / b
    return out


# ----------------------------------------------------------------------------------------
# The fused step.


def time_step(
    model: ViT, size: int, config: PartitionConfig, dtype: str, images: np.ndarray, repeats: int
) -> dict[str, Any]:
    """Median wall / CPU seconds of the end-to-end step on one batch (host -> device copy
    included), compile seconds (the step's three programs, `engine.step.Programs`), and
    memory (arguments + outputs + temporaries of the three compiled programs, summed: XLA's
    memory analysis)."""
    step = make_step(model, size, config, dtype=dtype)
    params, pixels, key = step.arguments(images)
    compile_s, memory = 0.0, []

    def compiled(program: Any, *args: Any) -> Any:
        nonlocal compile_s
        start = time.perf_counter()
        executable = program.lower(*args).compile()
        compile_s += time.perf_counter() - start
        memory.append(executable.memory_analysis())
        return executable

    backbone = compiled(step.programs.backbone, params, pixels)
    features, finite, plain = backbone(params, pixels)
    partition = compiled(step.programs.partition, features, finite, plain, key)
    tree = partition(features, finite, plain, key)
    finish = compiled(step.programs.finish, features, tree)

    def run() -> Any:
        features, finite, plain = backbone(params, step.arguments(images)[1])
        tree = partition(features, finite, plain, key)
        return jax.block_until_ready((tree, finish(features, tree)))

    out, _ = run()
    seconds = _median_time(run, repeats, False)
    program = (
        float("nan")
        if None in memory
        else float(
            sum(
                m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                for m in memory
            )
        )
    )
    nodes = float(np.asarray(out.valid).sum(axis=1).mean())
    return {**seconds, "compile_s": compile_s, "program_bytes": program, "mean_nodes": nodes}


# ----------------------------------------------------------------------------------------
# The NumPy / SciPy reference.


def time_reference(features: np.ndarray, config: PartitionConfig) -> dict[str, dict]:
    """Wall / CPU seconds per stage of `hiseg_jax.spectral.reference` on one image's features."""
    x = features.reshape(-1, features.shape[-1]).astype(np.float64)
    state: dict[str, Any] = {}

    def graph_eig() -> None:
        state["w"] = reference_graph(x, config)
        state["emb"] = stage_a_embedding(state["w"], config.n_parts, config.eps)

    def kmeans() -> None:
        state["parts"] = stage_a_parts(state["emb"], config, 0)

    def tree() -> None:
        parts = state["parts"]
        reference_stage_b(reference_part_graph(state["w"], parts, int(parts.max()) + 1), config, 0)

    out = {name: _timed(fn) for name, fn in zip(STAGES[1:], (graph_eig, kmeans, tree), strict=True)}
    out["total"] = {clock: sum(out[k][clock] for k in STAGES[1:]) for clock in ("wall", "cpu")}
    return out


# ----------------------------------------------------------------------------------------
# Report.


def fit_exponent(ns: list[int], seconds: list[float]) -> float:
    """a in seconds ~ c * N^a (least squares in log-log); nan with fewer than 2 points."""
    if len(ns) < 2:
        return float("nan")
    return float(np.polyfit(np.log(ns), np.log(seconds), 1)[0])


def report(results: dict[str, Any]) -> str:
    peak = results["peak"]
    lines = [
        f"device: {results['device']}; backbone {results['model']} ({results['dtype']}); "
        f"images: {results['images']}; P = {results['config']['n_parts']}, "
        f"levels = {results['config']['levels']}, stage A {results['config']['stage_a_solver']} "
        f"x {results['config']['stage_a_restarts']} restarts"
        f", stage B {results['solver']}; load average {results['load_before']:.1f} before, "
        f"{results['load_after']:.1f} after (other processes share the CPU: compare CPU s)",
        f"peak: 2048^3 matmul {peak['wall'] / 1e9:.1f} GFLOP per wall-s, "
        f"{peak['cpu'] / 1e9:.1f} per CPU-s; {results['peak_note']}",
        "",
        "| px | N | batch | img/s (wall) | CPU s/img | compile s | program MiB | nodes/img |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['size']} | {r['n']} | {r['batch']} | {r['batch'] / r['wall']:.3f} | "
            f"{r['cpu'] / r['batch']:.2f} | {r['compile_s']:.0f} | "
            f"{r['program_bytes'] / 2**20:.0f} | {r['mean_nodes']:.0f} |"
        )
    lines += [
        "",
        "Per stage, CPU s/img; backbone GFLOP per CPU-s (% of the matmul's); the "
        "NumPy/SciPy reference on the same image's features (float64, CPU s):",
        "",
        "| N | batch | backbone | graph+eig | k-means | stage B | sum | step | "
        "backbone GFLOP/CPU-s | host s/img | ref graph+eig | ref k-means | "
        "ref stage B | ref total |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in results["stages"]:
        b = s["batch"]
        rate = s["backbone_flops_per_image"] * b / s["backbone"]["cpu"]
        ref = s.get("reference") or {}
        ref_cells = " | ".join(
            f"{ref[k]['cpu']:.2f}" if k in ref else "-"
            for k in ("graph_eig", "kmeans", "stage_b", "total")
        )
        total = sum(s[k]["cpu"] for k in STAGES)
        lines.append(
            f"| {s['n']} | {b} | "
            + " | ".join(f"{s[k]['cpu'] / b:.2f}" for k in STAGES)
            + f" | {total / b:.2f} | {s['step']['cpu'] / b:.2f} | "
            f"{rate / 1e9:.1f} ({100 * rate / peak['cpu']:.0f}%) | "
            f"{s['host_seconds_per_image']:.3f} | {ref_cells} |"
        )
    lines += [
        "",
        "CPU time per image ~ N^a (fit over the sizes): "
        + ", ".join(f"{k} a = {v:.2f}" for k, v in results["exponents"].items()),
        f"peak RSS of the process: {results['peak_rss_mib']:.0f} MiB",
    ]
    return "\n".join(lines)


def exponents(stage_rows: list[dict[str, Any]]) -> dict[str, float]:
    """a of CPU s/img ~ N^a per stage, for the step and for the reference partitioner."""
    ns = [s["n"] for s in stage_rows]
    fits = {
        k: fit_exponent(ns, [s[k]["cpu"] / s["batch"] for s in stage_rows])
        for k in (*STAGES, "step")
    }
    with_ref = [s for s in stage_rows if s["reference"]]
    fits["reference"] = fit_exponent(
        [s["n"] for s in with_ref], [s["reference"]["total"]["cpu"] for s in with_ref]
    )
    return fits


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs of the same benchmark (same device, model and config): runs and
    stage splits in size order. A later part's (N, batch) point replaces an earlier one (a
    re-measured point); the stage split of an N is the first part's."""
    first = parts[0]
    for other in parts[1:]:
        for field in ("device", "model", "dtype", "config"):
            if other[field] != first[field]:
                raise SystemExit(f"cannot merge results with different {field}")
    runs = {(r["n"], r["batch"]): r for part in parts for r in part["runs"]}
    stages: dict[int, dict[str, Any]] = {}
    for part in parts:
        for r in part["stages"]:
            stages.setdefault(r["n"], r)
    merged = {**first, "runs": [runs[k] for k in sorted(runs)]}
    merged["stages"] = [stages[k] for k in sorted(stages)]
    merged["exponents"] = exponents(merged["stages"])
    merged["peak_rss_mib"] = max(p["peak_rss_mib"] for p in parts)
    merged["load_before"] = max(p["load_before"] for p in parts)
    merged["load_after"] = max(p["load_after"] for p in parts)
    return merged


def plot(results: dict[str, Any], path: Path) -> None:
    """images/s vs N (one line per batch size, reference dashed) and vs batch size; solid:
    per wall-second, dotted: per CPU-second (the machine's other load removed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for batch in sorted({r["batch"] for r in results["runs"]}):
        runs = sorted((r for r in results["runs"] if r["batch"] == batch), key=lambda r: r["n"])
        ns = [r["n"] for r in runs]
        (line,) = axes[0].plot(ns, [batch / r["wall"] for r in runs], "o-", label=f"batch {batch}")
        axes[0].plot(ns, [batch / r["cpu"] for r in runs], ":", color=line.get_color())
    ref = [
        (s["n"], 1.0 / s["reference"]["total"]["cpu"]) for s in results["stages"] if s["reference"]
    ]
    if ref:
        axes[0].plot(
            *zip(*ref, strict=True),
            "k--",
            marker="s",
            label="NumPy reference, partitioner only (per CPU-s)",
        )
    for n in sorted({r["n"] for r in results["runs"]}):
        runs = sorted((r for r in results["runs"] if r["n"] == n), key=lambda r: r["batch"])
        batches = [r["batch"] for r in runs]
        (line,) = axes[1].plot(
            batches, [r["batch"] / r["wall"] for r in runs], "o-", label=f"N = {n}"
        )
        axes[1].plot(batches, [r["batch"] / r["cpu"] for r in runs], ":", color=line.get_color())
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="patches N",
        ylabel="images / s",
        title="end-to-end vs N (solid: wall, dotted: CPU-s)",
    )
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="batch size",
        ylabel="images / s",
        title="vs batch size (solid: wall, dotted: CPU-s)",
    )
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"{results['device']} ({results['dtype']} backbone)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the full sweep (hours on CPU)")
    parser.add_argument("--sizes", type=int, nargs="+", help="image sides in px (x 14)")
    parser.add_argument("--batches", type=int, nargs="+")
    parser.add_argument("--reference-sizes", type=int, nargs="*")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--config",
        default="",
        help="PartitionConfig fields over the default, e.g. stage_b_solver=lanczos; "
        "'@paper' first for the authors' stage A, e.g. @paper,stage_a_restarts=1",
    )
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument(
        "--no-stages",
        action="store_true",
        help="end-to-end runs only: no per-stage split, no reference (for "
        "large batches, merged with a run that has them)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "throughput.json")
    parser.add_argument(
        "--plot-from",
        type=Path,
        nargs="+",
        help="only plot saved JSONs (several: runs merged, e.g. a sweep run "
        "in parts); the plot goes next to --output",
    )
    args = parser.parse_args()
    if args.plot_from:
        results = merge_results([json.loads(p.read_text()) for p in args.plot_from])
        args.output.write_text(json.dumps(results, indent=1))
        plot(results, args.output.with_suffix(".png"))
        print(report(results))
        return
    preset = FULL if args.full else QUICK
    sizes, batches = args.sizes or preset["sizes"], args.batches or preset["batches"]
    reference_sizes = (
        preset["reference_sizes"] if args.reference_sizes is None else args.reference_sizes
    )
    repeats = args.repeats or preset["repeats"]
    config = parse_setting(f"cli:{args.config}")[1]
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    model, model_name = load_model(args.random_weights)
    pictures, paths, source = load_images(max(batches))
    device = jax.devices()[0]
    load_before = os.getloadavg()[0]
    peak = measured_matmul_peak(dtype)
    note = "no theoretical figure for this device"
    if device.platform == "cpu":
        theory, formula = cpu_theoretical_peak()
        note = f"theoretical {theory / 1e9:.0f} GFLOP/s = {formula}"
    results: dict[str, Any] = {
        "device": f"{device.device_kind} x {jax.device_count()} ({cpu_model()}, "
        f"{os.cpu_count()} cores; jax {jax.__version__})",
        "model": model_name,
        "dtype": args.dtype,
        "images": source,
        "solver": config.stage_b_solver,
        "config": {f: getattr(config, f) for f in config.__dataclass_fields__},
        "peak": peak,
        "peak_note": note,
        "load_before": load_before,
        "runs": [],
        "stages": [],
    }
    for size in sizes:
        n = (size // 14) ** 2
        host = host_seconds(paths, pictures, size, model)
        for batch in batches:
            images = preprocess(pictures[:batch], size, model.config)
            run = time_step(model, size, config, args.dtype, images, repeats)
            results["runs"].append({"size": size, "n": n, "batch": batch, **run})
            print(
                f"N={n} batch={batch}: {batch / run['wall']:.3f} img/s, "
                f"{run['cpu'] / batch:.1f} CPU s/img (compile {run['compile_s']:.0f} s)",
                flush=True,
            )
        if args.no_stages:
            continue
        batch = batches[0]
        images = preprocess(pictures[:batch], size, model.config)
        stages = time_stages(model, config, dtype, images, repeats)
        step = next(
            {"wall": r["wall"], "cpu": r["cpu"]}
            for r in results["runs"]
            if r["n"] == n and r["batch"] == batch
        )
        reference = None
        if size in reference_sizes:
            feats = np.asarray(
                stage_programs(model, config, dtype, (1, 1))["backbone"](
                    cast_floating(nnx.state(model, nnx.Param), dtype), images[:1]
                )
            )[0]
            reference = time_reference(feats, PartitionConfig.paper())
        results["stages"].append(
            {
                "size": size,
                "n": n,
                "batch": batch,
                **stages,
                "step": step,
                "reference": reference,
                "host_seconds_per_image": host,
            }
        )
        print(f"N={n} stages done", flush=True)
    results["exponents"] = exponents(results["stages"])
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["load_after"] = os.getloadavg()[0]
    if device.platform == "gpu":
        results["device_peak_bytes"] = device.memory_stats().get("peak_bytes_in_use")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1))
    plot(results, args.output.with_suffix(".png"))
    print(report(results))


if __name__ == "__main__":
    main()
