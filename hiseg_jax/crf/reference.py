"""The dense CRF through pydensecrf2 (Krähenbühl's C++ code, the authors' calls): the
reference that tests and benchmarks compare `crf.dense_crf` with. Needs the optional
`pydensecrf2` package (the `test` and `bench` extras), which the runtime never imports."""

from __future__ import annotations

import numpy as np

from hiseg_jax.crf.dense_crf import CRFConfig


def pydensecrf_marginals(logits: np.ndarray, image: np.ndarray, config: CRFConfig) -> np.ndarray:
    """The same CRF through pydensecrf2 (the authors' calls), for tests and benchmarks.

    logits float [H, W, K], image uint8 [H, W, 3] -> marginals float32 [H, W, K]. Needs the
    optional `pydensecrf2` package (not a dependency of this one).
    """
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise ImportError("pydensecrf_marginals needs `pip install pydensecrf2`") from err
    h, w, k = logits.shape
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(-logits.reshape(-1, k).T, np.float32))
    crf.addPairwiseGaussian(sxy=config.gauss_sxy, compat=config.gauss_compat)
    crf.addPairwiseBilateral(
        sxy=config.bilateral_sxy,
        srgb=config.bilateral_srgb,
        rgbim=np.array(image, np.uint8, order="C"),
        compat=config.bilateral_compat,
    )
    return np.array(crf.inference(config.n_iter)).reshape(k, h, w).transpose(1, 2, 0)
