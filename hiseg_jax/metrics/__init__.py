"""Evaluation metrics (docs/metrics.md): covering metrics and max-overlap semantic
scores, jit-compiled and batched, with a NumPy reference (`reference`) as their oracle.

- `evaluate_batch`: NMCovering per region set, NHCovering, and every GT node's best match
  with its TP / FP / FN, against raw GT label maps encoded by a `LabelSpace`;
- `nf_covering_batch`: NFCovering over foreground instances;
- `evaluate_bsds_batch`: area-weighted covering (Best, and per level for ODS / OIS) against
  several annotators;
- `Accumulator`: per-dataset totals that save, load and merge; `summary()` gives the final
  numbers (semantic mIoU / pAcc / mAcc / fIoU per region set, i.e. per hierarchy depth);
- `confusion_counts` + `hungarian_scores`: the peers' dataset-level Hungarian protocol.

    space = label_space(load_hierarchy("cityscapes"))
    acc = Accumulator.for_regions(space)
    for ids, pred, gt in batches:
        acc.add(evaluate_batch(pred, gt, space), ids)
    acc.summary()
"""

from hiseg_jax.metrics.accumulators import Accumulator
from hiseg_jax.metrics.regions import Matches, RegionStats, TreePrediction
from hiseg_jax.metrics.scores import (
    BatchScores,
    BSDSScores,
    evaluate_batch,
    evaluate_bsds_batch,
    nf_covering_batch,
)
from hiseg_jax.metrics.semantic import (
    SemanticScores,
    confusion_counts,
    hungarian_scores,
    semantic_scores,
)

__all__ = [
    "Accumulator",
    "BSDSScores",
    "BatchScores",
    "Matches",
    "RegionStats",
    "SemanticScores",
    "TreePrediction",
    "confusion_counts",
    "evaluate_batch",
    "evaluate_bsds_batch",
    "hungarian_scores",
    "nf_covering_batch",
    "semantic_scores",
]
