"""benchmarks/partition_sweep.py's settings: what a setting means when it names nothing."""

from __future__ import annotations

import partition_sweep  # benchmarks/ (tests/conftest.py puts it on sys.path)
import pytest

from hiseg_jax.crf.guided import GuidedConfig
from hiseg_jax.features import DEFAULT_FEATURES, PAPER_FEATURES
from hiseg_jax.spectral.config import PartitionConfig


def test_a_bare_setting_is_the_package_default_and_paper_the_papers():
    """`default:` is the default partition on the default features (no refinement);
    `@paper` switches both the partition and the features to the paper's."""
    default = partition_sweep.parse_full_setting("default:")
    assert (default.config, default.features, default.refine) == (
        PartitionConfig(),
        DEFAULT_FEATURES,
        None,
    )
    paper = partition_sweep.parse_full_setting("paper:@paper")
    assert (paper.config, paper.features) == (PartitionConfig.paper(), PAPER_FEATURES)
    named = partition_sweep.parse_full_setting("g:@paper,features=keys,guided.radius=8")
    assert (named.features, named.refine) == ("keys", GuidedConfig(radius=8))


def test_unknown_fields_are_refused():
    with pytest.raises(SystemExit, match="unknown PartitionConfig field 'level'"):
        partition_sweep.parse_full_setting("x:level=3")
    with pytest.raises(SystemExit, match="unknown GuidedConfig field 'size'"):
        partition_sweep.parse_full_setting("x:guided.size=3")
