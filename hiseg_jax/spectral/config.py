"""Frozen configuration of the spectral partitioner (docs/method.md sections 1-4;
the comments' section numbers are that file's).

One dataclass is shared by the NumPy reference (`hiseg_jax.spectral.reference`) and the JAX
implementation (`hiseg_jax.spectral.partition`), so both run exactly the same settings. Defaults are
the authors' published defaults unless a field's comment says otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

StageASolver = Literal["lanczos", "block", "eigh", "eigh_full"]
StageAInit = Literal["lattice", "kmeans++"]
StageBSolver = Literal["eigh", "lanczos"]


@dataclasses.dataclass(frozen=True)
class PartitionConfig:
    """Parameters of graph construction, stage A (parts) and stage B (recursive cuts)."""

    # Graph (section 1).
    adjacency: Literal["minmax", "exp"] = "minmax"
    sigma: float = 1.0  # width of the "exp" adjacency W = exp(-d / (2 sigma^2))
    threshold: float = 0.0  # W < threshold is zeroed; 0 disables it
    eps: float = 1e-12  # degrees (and volumes, row norms) are clamped to >= eps
    # min of the Gram matrix (the minmax adjacency's largest distance) on the low-rank path:
    # "search": farthest-pair search, O(N E), exact to rounding on all 346 BSDS500 images
    # tested (`graph.gram_min_search`); "exact": all pairs in blocks, O(N^2 E) (the paper's).
    # The dense path (stage_a_solver "eigh"/"eigh_full") always takes the exact one.
    gram_min: Literal["search", "exact"] = "search"
    # Stage A (section 2). The defaults are this project's (docs/method.md section 9:
    # measured on BSDS500 train); `PartitionConfig.paper()` gives the authors' stage A.
    n_parts: int = 200  # P; Cityscapes uses 300
    # Eigensolver of the top stage_a_k pairs of A: "lanczos" (Krylov on the low-rank
    # operator, never forms an N x N array), "block" (the same, a block of stage_a_block
    # vectors per step: the operator is read once per block, not once per vector), "eigh"
    # (dense A; LAPACK's top-k subset driver on CPU, the full eigh elsewhere) or
    # "eigh_full" (dense A, the full eigh everywhere).
    stage_a_solver: StageASolver = "block"
    stage_a_k: int = 48  # eigenvectors in the embedding, at most N (the paper's: P)
    # Krylov dimension of "lanczos" (its steps, clipped to [k, N]) and of "block" (rounded
    # up to whole blocks).
    lanczos_iters: int = 128
    stage_a_block: int = 8  # vectors per step of the "block" solver
    # Weight of the patch coordinates (row / h, col / w) appended to the unit-row embedding:
    # parts become spatially coherent (0: the paper's, coordinates unused).
    stage_a_coords: float = 2.0
    # k-means start of stage A: "lattice" (one Lloyd run from P patches spread evenly over
    # the grid: deterministic, no key) or "kmeans++" (the authors': best of stage_a_restarts).
    stage_a_init: StageAInit = "lattice"
    stage_a_restarts: int = 10  # k-means++ restarts of stage A (the authors': 10)
    kmeans_restarts: int = 10  # k-means restarts of stage B's k-way cuts
    kmeans_max_iter: int = 600
    kmeans_tol: float = 1e-6
    # Stage B (section 4).
    levels: int = 9
    max_kways: int = 10
    min_points: int = 1
    mncut_th: float = 0.8
    # rho = ||L* - L||_F / gap above which a k0-way cut (k0 > 2) is refused. 200 (chosen on
    # BSDS500 train with merge_below, docs/quality.md screen 4) lets ~2x more regions split;
    # the paper's code uses 50 (its configs say 80, but that value is never passed through).
    max_perturb: float = 200.0
    # A k0-way cut (k0 > 2) that fails the perturbation test: False stops the node (the
    # paper's); True retries with k0 - 1, ..., 2 clusters, as after a high MNcut.
    perturb_fallback: bool = False
    # "lanczos": masked Lanczos on each node's Laplacian (the default: same trees on BSDS500,
    # docs/method.md section 9, and several times faster); "eigh": its dense eigh (paper).
    stage_b_solver: StageBSolver = "lanczos"
    stage_b_lanczos_steps: int = 64  # Krylov steps when stage_b_solver == "lanczos" (<= P)
    node_chunk: int = 2  # stage-B nodes split at once (vmapped); results do not depend on it
    # A node of n parts is split on its parts alone, gathered into the smallest of these sizes
    # >= n (P for larger nodes): most nodes are small, and their eigh, k-means and sweeps then
    # cost a fraction of P x P work. Results do not depend on them beyond rounding.
    stage_b_node_sizes: tuple[int, ...] = (64, 16)
    # After stage B, leaves of fewer than merge_below patches join their best-bordering
    # sibling, smallest first (`spectral.merge`; section 4). 0 or 1: off (the paper's). 14
    # (1.4% of the 448-px grid) removes the slivers the looser max_perturb and the default
    # features add (docs/quality.md screen 6).
    merge_below: int = 14

    def __post_init__(self) -> None:
        if self.n_parts < 2:
            raise ValueError(f"n_parts must be >= 2, got {self.n_parts}")
        if self.max_kways < 2:
            raise ValueError(f"max_kways must be >= 2, got {self.max_kways}")
        positive = (
            "stage_a_k",
            "stage_a_restarts",
            "kmeans_restarts",
            "kmeans_max_iter",
            "lanczos_iters",
            "stage_a_block",
            "stage_b_lanczos_steps",
            "node_chunk",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.merge_below < 0:
            raise ValueError(f"merge_below must be >= 0, got {self.merge_below}")
        if self.levels < 1:
            raise ValueError(f"levels must be >= 1, got {self.levels}")
        if self.stage_a_solver not in ("eigh", "eigh_full", "lanczos", "block"):
            raise ValueError(
                "stage_a_solver must be 'eigh', 'eigh_full', 'lanczos' or 'block', "
                f"got {self.stage_a_solver!r}"
            )
        if self.stage_a_init not in ("lattice", "kmeans++"):
            raise ValueError(
                f"stage_a_init must be 'lattice' or 'kmeans++', got {self.stage_a_init!r}"
            )
        if not self.stage_a_coords >= 0:
            raise ValueError(f"stage_a_coords must be >= 0, got {self.stage_a_coords}")
        if self.stage_b_solver not in ("eigh", "lanczos"):
            raise ValueError(
                f"stage_b_solver must be 'eigh' or 'lanczos', got {self.stage_b_solver!r}"
            )
        if not all(s >= 1 for s in self.stage_b_node_sizes):
            raise ValueError(f"stage_b_node_sizes must be >= 1, got {self.stage_b_node_sizes}")
        if self.gram_min not in ("search", "exact"):
            raise ValueError(f"gram_min must be 'search' or 'exact', got {self.gram_min!r}")
        if self.adjacency not in ("minmax", "exp"):
            raise ValueError(f"adjacency must be 'minmax' or 'exp', got {self.adjacency!r}")

    @classmethod
    def paper(cls, **overrides: object) -> PartitionConfig:
        """The authors' path (docs/method.md section 2): the top P eigenvectors of the dense
        A, rows normalised, no coordinates, the best of 10 k-means++ runs, the exact graph
        statistics and dense eigh in stage B. `overrides` replace any field (`stage_a_k`
        follows `n_parts` unless given); the paper's stopping rule (max_perturb 50, no leaf
        merging); stage B's other settings are the default's.
        """
        paper = dict(
            gram_min="exact",
            stage_a_solver="eigh",
            stage_b_solver="eigh",
            stage_a_k=overrides.get("n_parts", cls.n_parts),
            lanczos_iters=300,
            stage_a_coords=0.0,
            stage_a_init="kmeans++",
            stage_a_restarts=10,
            max_perturb=50.0,
            perturb_fallback=False,
            merge_below=0,
        )
        return cls(**(paper | overrides))


def check_grid(grid: tuple[int, int], config: PartitionConfig) -> None:
    """ValueError unless a patch grid (h, w) holds at least `config.n_parts` patches: stage A
    clusters the patches into n_parts parts."""
    h, w = (int(s) for s in grid)
    if h * w < config.n_parts:
        raise ValueError(f"{h}x{w} = {h * w} patches are fewer than n_parts = {config.n_parts}")
