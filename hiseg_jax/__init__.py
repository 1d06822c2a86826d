"""hiseg_jax: unsupervised hierarchy-agnostic image segmentation (recursive deep spectral
clustering, Rossetti & Pirri, NeurIPS 2024) as jit-compiled, batched JAX programs."""

__version__ = "0.1.0"

# Public entry points, imported on first use so that `import hiseg_jax` stays fast (no JAX).
_LAZY = {
    "segment": "hiseg_jax.api",
    "SegmentationResult": "hiseg_jax.api",
    "GuidedConfig": "hiseg_jax.crf.guided",  # segment(..., refine=...): the default
    "CRFConfig": "hiseg_jax.crf.dense_crf",  # the paper's "w CRF"
    "upsample_labels": "hiseg_jax.tree",
    "load_image": "hiseg_jax.images",
    "viewer_page": "hiseg_jax.viewer",
    "write_viewer": "hiseg_jax.viewer",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hiseg_jax' has no attribute {name!r}")
