"""Oracle: a diagnostic proposer that drafts AR's own continuation of the same sample.

With every proposal right, a chain of depth d gives tau = d + 1 per round, so the oracle
measures the engine's ceiling (verification cost of a depth-d chain against its benefit) on
the machine at hand. `wrong=true` drafts tokens that are certainly not AR's, which must give
AR's ids with tau = 1: the engine's safety net for a bad draft.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vispec_bench.errors import InputError
from vispec_bench.plugins.method import Method
from vispec_bench.engine.proposer import Proposer
from vispec_bench.engine.draft_tree import chain


@dataclass
class OracleOptions:
    depth: int = 4  # draft tokens per round
    wrong: bool = False  # draft (AR token + 1) mod V instead: every proposal is rejected


class OracleProposer(Proposer):
    def __init__(self, reference_ids: list[int], depth: int, wrong: bool, vocab_size: int):
        self.reference_ids = reference_ids
        self.depth = depth
        self.wrong = wrong
        self.vocab_size = vocab_size
        self.max_verify_tokens = depth + 1

    def propose(self, emitted, budget):
        position = len(emitted)
        continuation = self.reference_ids[position:position + min(self.depth, budget - 1)]
        if not continuation:
            return None
        if self.wrong:
            continuation = [(token + 1) % self.vocab_size for token in continuation]
        return chain(torch.tensor(continuation, dtype=torch.long))


class Oracle(Method):
    name = "oracle"
    Options = OracleOptions

    def make_proposer(self, adapter, context):
        if context.reference_ids is None:
            raise InputError("the oracle needs AR's ids for the sample; run it together with ar")
        if self.options.depth < 1:
            raise InputError(f"oracle.depth must be >= 1, got {self.options.depth}")
        return OracleProposer(context.reference_ids, self.options.depth, self.options.wrong, adapter.vocab_size)
