"""hiseg_jax: unsupervised hierarchy-agnostic image segmentation (recursive deep spectral
clustering, Rossetti & Pirri, NeurIPS 2024) as jit-compiled, batched JAX programs."""

__version__ = "0.1.0"
