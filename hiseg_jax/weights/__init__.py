"""Pretrained weights: checkpoint conversion, on-disk cache, ONNX import and downloads."""

from hiseg_jax.weights.convert import SOURCES, convert_state_dict

__all__ = ["SOURCES", "convert_state_dict"]
