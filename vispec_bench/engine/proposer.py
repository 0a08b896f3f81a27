"""The proposer interface (DESIGN.md seam 2): the only code a speculative method implements."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vispec_bench.engine.adapter import PrefillOutput, PreparedPrompt, TargetAdapter
from vispec_bench.engine.draft_tree import DraftTree


@dataclass
class RoundResult:
    """What the engine tells a proposer after verifying its tree."""

    path: list[int]  # accepted node indices, root (0) first
    path_tokens: list[int]  # token at each path node (root token first)
    path_hidden: torch.Tensor  # [len(path), H] target last hidden states at the path nodes
    closing_token: int  # bonus/recovered token emitted after the path (the next root)


class Proposer:
    """Base class. One instance decodes one sample; the method builds a fresh one per sample.

    `acceptance_rule` is a rule from vispec_bench.engine.acceptance; None means the lossless rule.
    """

    acceptance_rule = None

    def start(self, adapter: TargetAdapter, prompt: PreparedPrompt, prefill: PrefillOutput, first_token: int) -> None:
        """Called once after the target's prefill, inside the decode timing."""

    def propose(self, emitted: list[int], budget: int) -> DraftTree | None:
        """A draft tree rooted at emitted[-1]; `budget` = tokens left to the cap, so depth >= budget is wasted."""
        raise NotImplementedError

    def absorb(self, result: RoundResult) -> None:
        """Update draft state with the verified round (accepted path, target hidden states)."""
