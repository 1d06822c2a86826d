"""The default stage A (`spectral.partition.spectral_embedding`, `PartitionConfig()`) and
the paper's (`PartitionConfig.paper()`).

- The Lanczos eigenpairs on the low-rank operator against float64 `numpy.linalg.eigh` of the
  dense A on the meaningful top m (eigenvalues >= mean 1 / deg, docs/method.md section 8):
  sin of the largest principal angle <= 1e-4 and residuals <= 1e-5; the whole embedding
  against the NumPy oracle `reference_embedding` (Gram matrices, invariant to signs and
  rotations inside degenerate eigenspaces) to 1e-5 where K = m. Planted hierarchies here;
  real features in test_stage_a_realdata.py.
- No N x N array anywhere in the default partitioner (its jaxpr at N = 16,384, batch 8)
  while the paper path has them (so the check can fail).
- Accelerator-clean: the default partitioner exported for TPU and CUDA and lowered for CPU
  holds no host callback and no factorization (eigh, QR, Cholesky, LU, SVD) of a matrix
  larger than the small K x K / Lanczos / part-graph ones; the paper path fails the check.
"""

from __future__ import annotations

import dataclasses
import re

import chex
import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from hiseg_jax.spectral import partition as jp
from hiseg_jax.spectral import reference, reference_embedding, synthetic
from hiseg_jax.spectral.config import PartitionConfig
from hiseg_jax.spectral.reference import normalized_adjacency, reference_graph

DEFAULT = PartitionConfig()
PLANTED = dict(grid=(24, 24), branching=(2, 2, 2), scales=(0.45, 0.55, 0.7), noise=0.02, dim=128)
SIN_TOL, RESIDUAL_TOL, GRAM_TOL = 1e-4, 1e-5, 1e-5


def stage_a_accuracy(features: np.ndarray, config: PartitionConfig, embed) -> dict[str, float]:
    """Errors of the JAX stage A on features [h, w, E] against float64 NumPy.

    embed(x [N, E]) -> (evecs [N, K], embedding [N, K + 2]); the Ritz values are taken in
    float64 from the dense A.
    """
    h, w, e = features.shape
    evecs_j, emb_j = (np.asarray(a, np.float64) for a in embed(features.reshape(-1, e)))
    x = features.astype(np.float64)
    evals, evecs, deg = reference_embedding.exact_eigenpairs(x, config)
    m = int(np.sum(evals >= np.mean(1.0 / deg)))
    a = normalized_adjacency(reference_graph(x, config), config.eps)
    evals_j = np.sum(evecs_j * (a @ evecs_j), axis=0)
    q, _ = np.linalg.qr(evecs_j[:, :m])
    cos = np.linalg.svd(evecs[:, :m].T @ q, compute_uv=False).min()
    residual = np.linalg.norm(a @ evecs_j[:, :m] - evecs_j[:, :m] * evals_j[:m], axis=0)
    gram_j = emb_j @ emb_j.T
    ref = reference_embedding.reference_embedding(x.reshape(h, w, e), config)
    gram = ref @ ref.T
    return dict(
        m=m,
        sin=float(np.sqrt(max(0.0, 1.0 - cos**2))),
        residual=float(residual.max()),
        gram=float(np.linalg.norm(gram_j - gram) / np.linalg.norm(gram)),
    )


def jax_stage_a(config: PartitionConfig, grid: tuple[int, int], wrap=lambda f: f):
    """x [N, E] -> (evecs, embedding) of the JAX stage A (wrap: e.g. jax.jit)."""

    def run(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        a = jp.affinity(x, config)
        key = jax.random.key(0)
        return jp.top_eigenvectors(a, config, key), jp.spectral_embedding(a, config, key, grid)

    return wrap(run)


class TestPlantedGraphs(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_embedding_matches_numpy_eigh_and_reference(self):
        """Default K = 32 > m: the meaningful top m against numpy; the whole embedding
        against the oracle where K = m (the rest of a larger K is the near-degenerate bulk,
        whose vectors are not unique, so no oracle can fix them)."""
        top_m = dataclasses.replace(DEFAULT, stage_a_k=8)
        embeds = {c: jax_stage_a(c, PLANTED["grid"], self.variant) for c in (DEFAULT, top_m)}
        for seed in (0, 1):
            feats, _ = synthetic.planted_hierarchy(seed, **PLANTED)
            acc = stage_a_accuracy(feats, DEFAULT, embeds[DEFAULT])
            assert acc["m"] == 8  # the 8 planted leaves
            assert acc["sin"] <= SIN_TOL and acc["residual"] <= RESIDUAL_TOL, acc
            acc = stage_a_accuracy(feats, top_m, embeds[top_m])
            assert acc["gram"] <= GRAM_TOL, acc


def test_embedding_shape_and_coordinates():
    feats, _ = synthetic.planted_hierarchy(0, **PLANTED)
    _, emb = jax_stage_a(DEFAULT, PLANTED["grid"], jax.jit)(feats.reshape(576, -1))
    chex.assert_shape(emb, (576, DEFAULT.stage_a_k + 2))
    chex.assert_tree_all_finite(emb)
    coords = np.asarray(emb[:, -2:]) / DEFAULT.stage_a_coords
    np.testing.assert_allclose(coords[25], [1.5 / 24, 1.5 / 24], rtol=1e-6)  # row 1, col 1
    np.testing.assert_allclose(np.linalg.norm(emb[:, :-2], axis=1), 1.0, rtol=1e-5)


def test_paper_config_is_the_authors_stage_a():
    paper = PartitionConfig.paper()
    assert (paper.stage_a_solver, paper.stage_a_k, paper.stage_a_coords) == ("eigh", 200, 0)
    assert (paper.stage_a_init, paper.stage_a_restarts, paper.gram_min) == ("kmeans++", 10, "exact")
    assert paper.stage_b_solver == "eigh"
    assert (paper.max_perturb, paper.perturb_fallback, paper.merge_below) == (50, False, 0)
    assert PartitionConfig.paper(n_parts=300).stage_a_k == 300
    stopping = {"max_perturb", "perturb_fallback", "merge_below"}
    same = {
        f.name
        for f in dataclasses.fields(PartitionConfig)
        if not f.name.startswith(("stage_a", "lanczos", "gram_min", "stage_b_solver"))
    } - stopping
    assert all(getattr(paper, f) == getattr(DEFAULT, f) for f in same)


def test_paper_embedding_has_no_coordinates():
    feats, _ = synthetic.planted_hierarchy(0, **PLANTED)
    config = PartitionConfig.paper(n_parts=24)
    _, emb = jax_stage_a(config, PLANTED["grid"], jax.jit)(feats.reshape(576, -1))
    chex.assert_shape(emb, (576, 24))


def test_reference_refuses_the_default_stage_a():
    feats, _ = synthetic.planted_hierarchy(0, grid=(8, 8), branching=(2,), dim=16)
    with pytest.raises(ValueError, match="paper"):
        reference.reference_stage_a(feats, PartitionConfig(n_parts=8), 0)


# ----------------------------------------------------------------------------------------
# No N x N array, no host callback, no large factorization.


def _n_by_n(jaxpr: jex.Jaxpr, n: int, found: list) -> list:
    """(primitive, shape) of every value in jaxpr (and its sub-jaxprs) with two dims >= n."""
    for eqn in jaxpr.eqns:
        found += [
            (eqn.primitive.name, v.aval.shape)
            for v in eqn.outvars
            if sum(d >= n for d in getattr(v.aval, "shape", ())) >= 2
        ]
        for sub in jex.jaxprs_in_params(eqn.params):
            _n_by_n(sub, n, found)
    return found


def _jaxpr(config: PartitionConfig, batch: int, side: int, width: int) -> jex.Jaxpr:
    x = jax.ShapeDtypeStruct((batch, side, side, width), jnp.float32)
    return jax.make_jaxpr(lambda f, k: jp.partition_arrays(f, k, config))(
        x, jax.random.key(0)
    ).jaxpr


def test_default_partitioner_has_no_n_by_n_array_at_16384_patches():
    assert _n_by_n(_jaxpr(DEFAULT, 8, 128, 384), 128 * 128, []) == []
    assert _n_by_n(_jaxpr(PartitionConfig.paper(), 1, 16, 8), 256, [])  # the check can fail


FACTORIZATION = re.compile(
    r"eigh|syev|heev|qr|geqrf|householder|orgqr|cholesky|potrf|^lu|getrf|svd|gesvd|gesdd|"
    r"schur|gees|sytrd|tridiagonal",
    re.IGNORECASE,
)
SIDE = 48  # N = 2304 patches: every legitimate factorization is far smaller
SMALL = 256  # >= P = 200, the Krylov sizes (96, 128) and K; << N


def factorization_problems(text: str) -> list[str]:
    """Host callbacks, and factorizations of a matrix with a dimension > SMALL, among the
    custom calls of a StableHLO module (dimensions read from the tensor types of the line)."""
    problems = []
    for line in text.splitlines():
        call = re.search(r"custom_call @([\w.$]+)", line)
        if call is None:
            continue
        target = call.group(1)
        dims = [
            int(d)
            for shape in re.findall(r"tensor<((?:\d+x)+)", line)
            for d in shape.split("x")
            if d
        ]
        if "callback" in target.lower():
            problems.append(f"host callback {target}")
        elif FACTORIZATION.search(target) and any(d > SMALL for d in dims):
            problems.append(f"{target} on {max(dims)}-wide operands")
    return problems


def exported_texts(config: PartitionConfig) -> dict[str, str]:
    """StableHLO of the traceable partitioner (batch 2, 48 x 48 x 16): TPU, CUDA (exported,
    no device needed) and CPU (lowered)."""
    fn = jax.jit(lambda f, k: jp.partition_arrays(f, k, config))
    args = (jax.ShapeDtypeStruct((2, SIDE, SIDE, 16), jnp.float32), jax.random.key(0))
    texts = {p: export.export(fn, platforms=[p])(*args).mlir_module() for p in ("tpu", "cuda")}
    texts["cpu"] = fn.lower(*args).as_text()
    return texts


def test_default_partitioner_exports_without_callbacks_or_large_factorizations():
    for platform, text in exported_texts(DEFAULT).items():
        assert "custom_call" in text or platform == "tpu"  # the stage-B eigh is in there
        assert factorization_problems(text) == [], platform


def test_the_export_check_catches_the_paper_path():
    texts = exported_texts(PartitionConfig.paper())
    assert any("Qr" in p or "Eigh" in p for p in factorization_problems(texts["tpu"]))
    assert any("syevd" in p for p in factorization_problems(texts["cuda"]))
    assert any("callback" in p for p in factorization_problems(texts["cpu"]))
