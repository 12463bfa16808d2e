"""Benchmarks (not installed with the package): :mod:`.speed` times meta-training and evaluation side by side
with the naive yardstick of :mod:`.naive`, with FLOPs and the matmul rate from :mod:`.flops`;
:mod:`.throughput` measures whole-machine throughput (N processes of T threads), side by side with the
reference of :mod:`.reference`; :mod:`.cli` is their command line. Run them from a clone with
``scripts/benchmark.py`` (speed) and ``scripts/bench_omniglot.py`` (accuracy on real Omniglot)."""
