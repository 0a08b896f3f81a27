"""Evaluation suites, one module each; they register in vispec_bench.plugins.registry.SUITES."""
