"""Matmul precision of every numerically sensitive product (graph, eigensolvers, k-means,
CRF, region counts): full float32, no TF32 / bfloat16 passes on accelerators, so results
agree across platforms and integer counts carried in float32 stay exact."""

import jax

HIGHEST = jax.lax.Precision.HIGHEST
