"""The proposer interface (seam 2 of docs/architecture.md): the only code a speculative method implements."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


class EmittedIds(Sequence[int]):
    """A read-only view of the ids the engine has emitted so far, handed to `Proposer.propose`.

    It wraps the engine's own list (no copy per round) and offers no way to change it, so a
    proposer can read the output but never alter it. A slice is a new list (a copy)."""

    __slots__ = ("_ids",)

    def __init__(self, ids: list[int]):
        self._ids = ids

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index):
        return self._ids[index]

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids)

    def __contains__(self, token) -> bool:
        return token in self._ids

    def __repr__(self) -> str:
        return f"EmittedIds({self._ids!r})"


class Proposer:
    """Base class. One instance decodes one sample; the method builds a fresh one per sample.

    `acceptance_rule` is a rule from vispec_bench.engine.acceptance; None means the lossless rule.
    `max_verify_tokens`: the largest verify block (root included) it proposes, if known: the
    compiled engine compiles that size before timing. `cache_slack`: cache entries beyond the
    prompt and the token cap that its forwards may append at once (a static cache is sized with it).
    `draft_forward_methods` names methods that run draft-network work outside the proposer's
    nn.Module attributes (whose forwards count anyway): the profiling pass times both as draft
    forwards (running.instruments.PhaseTimer.instrument), the rest of a round as harness.
    """

    acceptance_rule = None
    max_verify_tokens: int | None = None
    # Decoder layers whose inputs the proposer reads from the target's forwards (EAGLE-3); the
    # decode loop asks the adapter for exactly these, so AR's and other methods' forwards capture nothing.
    target_layers: tuple[int, ...] | None = None
    cache_slack: int = 0
    draft_forward_methods: tuple[str, ...] = ()
    instrument_modules = True  # False: all draft work goes through draft_forward_methods (see Eagle2Proposer)

    def start(self, adapter: TargetAdapter, prompt: PreparedPrompt, prefill: PrefillOutput, first_token: int) -> None:
        """Called once after the target's prefill, inside the decode timing."""

    def propose(self, emitted: EmittedIds, budget: int) -> DraftTree | None:
        """A draft tree rooted at emitted[-1]; `budget` = tokens left to the cap, so depth >= budget is wasted.
        `emitted` is read-only: the engine alone appends to the output."""
        raise NotImplementedError

    def absorb(self, result: RoundResult) -> None:
        """Update draft state with the verified round (accepted path, target hidden states)."""

    def draft_cost(self) -> dict:
        """What the draft side held for this decode, read by `decode` after its timed region (so it
        may read the device). Keys: `visual_tokens` (visual positions the draft's cache holds for the
        prompt), `kv_tokens` (the draft cache's peak entries, tree nodes included), `kv_bytes`
        (`draft_kv_bytes` of kv_tokens), and method-specific extras. {} (the default): the method
        reports no draft-side sequence; a method that has none says so with NO_DRAFT_CACHE."""
        return {}


NO_DRAFT_CACHE = {"visual_tokens": 0, "kv_tokens": 0, "kv_bytes": 0}  # draft_cost of a method without a draft cache


def draft_kv_bytes(kv_tokens: int, config, dtype: torch.dtype) -> int:
    """Bytes of kv_tokens entries of a KV cache of a network with this (text) config, in dtype:
    kv_tokens x 2 (K and V) x layers x num_key_value_heads x head_dim x element size."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return int(kv_tokens) * 2 * config.num_hidden_layers * heads * head_dim * dtype.itemsize
