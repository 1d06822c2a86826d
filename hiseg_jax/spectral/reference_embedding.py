"""Plain NumPy float64 oracle of the default stage-A embedding (`partition.spectral_embedding`).

The paper's stage A has its oracle in `hiseg_jax.spectral.reference` (run it with
`PartitionConfig.paper()`); this is the project's default (docs/method.md section 9): the
exact top K eigenvectors of the dense A = D^-1/2 W D^-1/2 (`numpy.linalg.eigh`), rows
normalised to unit length, then `stage_a_coords` times the patch coordinates
(row / h, col / w of the patch centres) appended.
"""

from __future__ import annotations

import numpy as np

from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.spectral.reference import (
    flatten_features,
    normalize_rows,
    normalized_adjacency,
    reference_graph,
)


def exact_eigenpairs(features: np.ndarray, config: PartitionConfig) -> tuple[np.ndarray, ...]:
    """(eigenvalues [N] descending, eigenvectors [N, N], clamped degrees [N]) of A of
    features [N, E] or [h, w, E], float64."""
    w = reference_graph(features, config)
    evals, evecs = np.linalg.eigh(normalized_adjacency(w, config.eps))
    return evals[::-1], evecs[:, ::-1], np.maximum(w.sum(axis=1), config.eps)


def reference_embedding(features: np.ndarray, config: PartitionConfig) -> np.ndarray:
    """Stage A's k-means input of features [h, w, E]: float64 [N, K] or [N, K + 2],
    K = min(stage_a_k, N)."""
    x, grid = flatten_features(np.asarray(features, np.float64))
    if grid is None:
        raise ValueError("the embedding needs features on a grid: [h, w, E]")
    _, evecs, _ = exact_eigenpairs(x, config)
    emb = normalize_rows(evecs[:, : config.stage_a_k], config.eps)
    if config.stage_a_coords == 0:
        return emb
    h, w = grid
    rows, cols = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    coords = config.stage_a_coords * np.stack([rows.ravel(), cols.ravel()], axis=1)
    return np.concatenate([emb, coords], axis=1)
