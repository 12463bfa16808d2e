"""Benchmarks (not installed with the package): :mod:`.speed` times meta-training and evaluation side by side
with the naive yardstick of :mod:`.naive`, with FLOPs and the matmul rate from :mod:`.flops`.
Run them from a clone with ``scripts/benchmark.py`` (speed) and ``scripts/bench_omniglot.py`` (accuracy on real Omniglot)."""
