"""Medusa heads with EAGLE-2's dynamic tree: the ViSpec paper's Medusa baseline.

The ViSpec authors' Medusa row (their repository's Medusa baseline) is not Medusa's fixed tree:
K ResBlock heads on the target's last hidden state, projected by the target's shared lm_head,
and the tree grown as EAGLE-2 grows it (vispec_bench.drafts.dynamic_tree). Level l (1-based) of
the tree takes head l-1's distribution — the same distribution for every node of that level,
since the heads only see h_t — so:

- level 1: head 0's top_k tokens, scored by their log-probability;
- level l > 1: the top_k level-(l-1) nodes by cumulative log-probability each get head l-1's
  top_k tokens as children, scored by parent score + log-probability;
- the total_token - 1 best nodes over all levels are kept (total_token counts the root).

The reference ignores its `depth` and always uses every head (levels = K). Here `depth` (0 =
K - 1, every head, as the reference) may cut the tree shorter; it cannot exceed K - 1. top_k and
total_token follow vispec_bench.drafts.tree_settings (reference convention; 0 = the device's
default, -1 = measured); the ViSpec paper uses top_k 8, total_token 30.

Heads load exactly as `medusa`'s (ours, `medusa_lm_head.pt`, `medusa_lm_head.safetensors`, the
ViSpec repo's baseline); training is `medusa`'s (`train --method medusa`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from methods.medusa import Medusa, MedusaOptions, MedusaProposer
from vispec_bench.drafts import tree_settings
from vispec_bench.drafts.dynamic_tree import DynamicTree
from vispec_bench.drafts.vocab import head_weight, to_vocab, token_map_of
from vispec_bench.engine.acceptance import accept_typical
from vispec_bench.errors import InputError


@dataclass
class MedusaDynamicOptions(MedusaOptions):
    depth: int = 0  # levels after the first: 0 = every head (K - 1), as the reference
    top_k: int = 0  # 0 = the device's default (tree_settings)
    total_token: int = 0  # root included; 0 = the device's default, -1 = measured


class MedusaDynamicProposer(MedusaProposer):
    def __init__(self, heads, adapter, tree: tree_settings.TreeSettings, options, draft_head):
        self.heads, self.draft_head, self.device, self.tree = heads, draft_head, adapter.device, tree
        self.max_verify_tokens = tree.draft_nodes + 1
        if options.typical:  # lossy, labelled so (Medusa.is_lossless)
            self.acceptance_rule = functools.partial(accept_typical, epsilon=options.typical_epsilon,
                                                     delta=options.typical_delta)

    @torch.no_grad()
    def propose(self, emitted, budget):
        levels = min(self.tree.levels, budget - 1)
        if levels < 1:
            return None
        k = self.tree.top_k
        log_probs = torch.log_softmax(self.heads(self.last_hidden, self.draft_head)[:levels].float(), dim=-1)  # [L, V]
        top = log_probs.topk(k, dim=-1)
        tokens = to_vocab(top.indices, token_map_of(self.heads))
        tree = DynamicTree(k)
        frontier = tree.add_root_children(top.values[0], tokens[0])
        for level in range(1, levels):  # every frontier node gets the same children: head `level`'s top_k
            frontier, _ = tree.add_level(frontier, top.values[level].expand(len(frontier), -1),
                                         tokens[level].expand(len(frontier), -1))
        return tree.select(self.tree.draft_nodes)


class MedusaDynamic(Medusa):
    name = "medusa-dynamic"
    Options = MedusaDynamicOptions
    compatible_checkpoints = ("medusa",)  # the same heads
    shipped_draft_of = "medusa"

    def prepare(self, adapter):
        opts = self.options
        self.heads = self.load_draft_network(adapter)
        self.draft_head = head_weight(adapter.lm_head.weight, token_map_of(self.heads))
        num_heads = len(self.heads.blocks)
        depth = opts.depth or num_heads - 1
        if not 1 <= depth <= num_heads - 1 or opts.top_k < 0 or opts.total_token < -1:
            raise InputError(f"{self.name}: depth must be 1..{num_heads - 1} (levels = depth + 1 <= {num_heads} heads; "
                             f"0 = every head), top_k >= 0 and total_token >= 2 (0 = default, -1 = measured); "
                             f"got {opts.depth}, {opts.top_k}, {opts.total_token}")
        self.tree, self.tree_choice = tree_settings.resolve(depth, opts.top_k, opts.total_token, adapter.device,
                                                           measure=lambda: self._measure(adapter, depth))
        self.tree_choice["num_heads"] = num_heads

    def _measure(self, adapter, depth: int):
        """Verify costs and the heads' cost spread over the depth + 1 levels resolve() charges
        (the heads run once per round, not once per level)."""
        hidden = torch.zeros(adapter.hidden_size, device=adapter.device, dtype=adapter.dtype)
        with torch.no_grad():
            heads_s = tree_settings.median_seconds(lambda: self.heads(hidden, self.draft_head).float().log_softmax(-1),
                                                   adapter.device, repeats=5)
        return tree_settings.verify_costs(adapter), heads_s / (depth + 1)

    def make_proposer(self, adapter, context):
        return MedusaDynamicProposer(self.heads, adapter, self.tree, self.options, self.draft_head)
