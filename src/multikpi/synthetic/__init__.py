"""Built-in synthetic datasets with a known ground truth, for the demo, the tests and the benchmarks."""
from multikpi.synthetic.feed import feed_oracle, make_feed
from multikpi.synthetic.mmoe import make_mmoe_synthetic, mmoe_synthetic_arrays, mmoe_synthetic_world

__all__ = ["feed_oracle", "make_feed", "make_mmoe_synthetic", "mmoe_synthetic_arrays", "mmoe_synthetic_world"]
