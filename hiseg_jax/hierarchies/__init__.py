"""Label hierarchies as data (`*.txt` beside this module) and the GT scoring space built from
them. See `hierarchy.py` for the file format."""

from hiseg_jax.hierarchies.hierarchy import (
    TYPES,
    Hierarchy,
    available_hierarchies,
    format_hierarchy,
    load_hierarchy,
    parse_hierarchy,
)
from hiseg_jax.hierarchies.labelspace import (
    LabelSpace,
    ancestor_matrix,
    flat_label_space,
    index_label_space,
    label_space,
)

__all__ = [
    "TYPES",
    "Hierarchy",
    "LabelSpace",
    "ancestor_matrix",
    "available_hierarchies",
    "flat_label_space",
    "format_hierarchy",
    "index_label_space",
    "label_space",
    "load_hierarchy",
    "parse_hierarchy",
]
