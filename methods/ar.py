"""Autoregressive decoding: the engine with no proposer, one token per target forward."""

from vispec_bench.plugins.method import Method


class AR(Method):
    name = "ar"

    def make_proposer(self, adapter, context):
        return None
