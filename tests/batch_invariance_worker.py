"""Run in a subprocess by tests/test_batch_invariance.py: the engine over the real images on
DEVICES forced host (CPU) devices, one image per device.

Usage: python tests/batch_invariance_worker.py DEVICES SHARED_DATA CHECKPOINT OUT.npz

Forces the devices before JAX starts, runs `batch_cases.engine_trees` at batch DEVICES and
saves every image's tree fields and features as `OUT.npz` entries "<id>/<field>".
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

DEVICES = int(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={DEVICES}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from batch_cases import SIZE, engine_trees, val_images  # noqa: E402

from hiseg_jax.engine.step import make_step  # noqa: E402
from hiseg_jax.spectral.config import PartitionConfig  # noqa: E402
from hiseg_jax.weights.checkpoint import load_backbone  # noqa: E402


def main() -> None:
    assert jax.local_device_count() == DEVICES, jax.devices()
    images = val_images(Path(sys.argv[2]))
    # One stage-B node at a time: with several CPU devices running at once, jaxlib's batched
    # LAPACK eigh (over the node_chunk nodes split together) deadlocked here even at one
    # image per device (engine.step's warning). Trees do not depend on node_chunk.
    config = dataclasses.replace(PartitionConfig(), node_chunk=1)
    step = make_step(load_backbone(sys.argv[3]), SIZE, config)
    assert step.mesh.devices.size == DEVICES
    trees = engine_trees(step, images, list(images), batch_size=DEVICES)
    arrays = {f"{name}/{field}": a for name, tree in trees.items() for field, a in tree.items()}
    np.savez(sys.argv[4], **arrays)


if __name__ == "__main__":
    main()
