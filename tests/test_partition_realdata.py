"""The JAX partitioner on real features: BSDS500 val images through the default backbone.

Skipped unless `../shared/data` and the converted default checkpoint exist. Four images at
448 px (32 x 32 patches), P = 200, the reference run with seeds 0, 1, 2.
- Stage B given the reference's own stage-A parts: >= 90% of the reference's nodes have a
  JAX node with IoU >= 0.9 (the rest: k-means restarts and float32 near-ties).
- End to end, a small subset of benchmarks/partition_quality.py: the JAX trees' covering
  (Best) and NMCovering against the human segmentations are >= the reference's mean minus
  the spread of its three seeds.
"""

from __future__ import annotations

from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hiseg_jax.spectral import graph, reference
from hiseg_jax.spectral import partition as jp
from hiseg_jax.spectral.config import PartitionConfig

pytestmark = [pytest.mark.slow, pytest.mark.data, pytest.mark.weights]

CONFIG = PartitionConfig.paper()  # the reference's settings
IMAGES = 4
_stage_b = jax.jit(jp.stage_b, static_argnames="config")


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    import partition_quality  # benchmarks/ (tests/conftest.py puts it on sys.path)

    return partition_quality


@pytest.fixture(scope="module")
def bsds(shared_data, default_checkpoint, quality) -> tuple[np.ndarray, list[np.ndarray]]:
    """Features [4, 32, 32, 384] of the first val images, and their human segmentations."""
    ids, segmentations = quality.bsds_val(shared_data, IMAGES)
    return quality.bsds_data.bsds_features("val", IMAGES, 448, None, shared_data)[1], segmentations


@pytest.fixture(scope="module")
def reference_seed0(bsds, quality) -> list[reference.RefResult]:
    return quality.reference_results(bsds[0], CONFIG, 0)


def _patch_masks_jax(res: jp.StageB, parts: np.ndarray) -> np.ndarray:
    nop, depth = np.asarray(res.node_of_part), np.asarray(res.depth)
    return np.stack([(nop[depth[m]] == m)[parts] for m in np.flatnonzero(np.asarray(res.valid))])


def test_gram_min_search_is_exact_on_real_features(bsds):
    """The default graph's farthest-pair search finds the exact minimum of the Gram matrix."""
    for feats in bsds[0]:
        u = graph.normalize_rows(jnp.asarray(feats.reshape(-1, feats.shape[-1])))
        exact = graph.gram_extremes(u)[0]
        np.testing.assert_allclose(graph.gram_min_search(u), exact, atol=1e-6)


def test_stage_b_agrees_with_reference_given_the_same_parts(bsds, reference_seed0):
    matched = total = 0
    for feats, ref in zip(bsds[0], reference_seed0, strict=True):
        w = reference.reference_graph(feats, CONFIG)
        n_used = int(ref.parts.max()) + 1
        w_p = np.zeros((CONFIG.n_parts, CONFIG.n_parts), np.float32)
        w_p[:n_used, :n_used] = reference.part_graph(w, ref.parts, n_used)
        used = jnp.arange(CONFIG.n_parts) < n_used
        res = _stage_b(jnp.asarray(w_p), CONFIG, jax.random.key(0), used)
        ours = _patch_masks_jax(res, ref.parts)  # [M_jax, N]
        theirs = ref.node_masks()  # [M_ref, N]
        inter = (theirs[:, None] & ours[None]).sum(-1)
        union = (theirs[:, None] | ours[None]).sum(-1)
        matched += int(((inter / union).max(1) >= 0.9).sum())
        total += len(theirs)
    assert matched >= 0.9 * total, f"{matched} of {total} reference nodes matched"


def test_end_to_end_quality_within_seed_spread(bsds, quality, reference_seed0):
    feats, segmentations = bsds
    rows = quality.quality_table(
        feats, segmentations, CONFIG, log=lambda _: None, references={0: reference_seed0}
    )
    for metric, (margin, passed) in quality.verdict(rows, "jax").items():
        assert passed, f"{metric}: JAX {rows['jax'][metric]:.4f} is {margin:.4f} under the bar"
    assert rows["jax"]["nodes"] > 3
