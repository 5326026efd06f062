"""Benchmarks and studies; run each as a module, e.g. ``python -m r1lab.bench.kl_study``."""
