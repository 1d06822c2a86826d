"""Dense CRF refinement of a tree's leaves at pixel resolution: `dense_crf` (mean field,
leaf unaries, level refinement) over the permutohedral `lattice`."""
