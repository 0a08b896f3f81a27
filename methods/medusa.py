"""Medusa (Cai et al., 2024): K extra decoding heads on the target's last hidden state.

Head i (0-based) reads h_t, the target's hidden state that predicts x_{t+1}, and predicts
x_{t+i+2}: ResBlock(h) = h + SiLU(W h + b) with W zero-initialised (so an untrained head starts
as the target's own next-token head), then a vocabulary projection. We share the target's
frozen lm_head by default (`share_lm_head=true`): a per-head projection costs H x V parameters
(28 M at SmolLM2's 49k vocabulary, 131 M at Vicuna-7B's), and the papers' heads start from a
copy of it anyway; `share_lm_head=false` gives each head its own copy to fine-tune.

Tree: a fixed sparse tree over the heads' top-k ranks (paper section 2.1.2). A node at depth d
is a path of ranks (r_1, ..., r_d); its token is head (d-1)'s r_d-th choice. The default tree
is built best-first under a prior on head accuracy (63 nodes by default); a JSON list of rank
paths can be given instead.

Acceptance: the engine's lossless rule by default (greedy or rejection sampling). Typical
acceptance (section 2.3.1) is available as `typical=true`; it is LOSSY — the output is no longer
distributed as the target's — and every record and report says so.
"""

from __future__ import annotations

import functools
import heapq
import json
from dataclasses import dataclass

import torch
from torch import nn

from vispec_bench.acceptance import accept_typical
from vispec_bench.method import DraftMethod
from vispec_bench.proposer import Proposer
from vispec_bench.tree import DraftTree


class ResBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.linear.weight)  # identity at start: head i begins as the target's lm_head
        self.act = nn.SiLU()

    def forward(self, x):
        return x + self.act(self.linear(x))


class MedusaHeads(nn.Module):
    def __init__(self, hidden: int, vocab: int, num_heads: int, share_lm_head: bool, lm_head: nn.Module | None = None):
        super().__init__()
        self.blocks = nn.ModuleList([ResBlock(hidden) for _ in range(num_heads)])
        self.share_lm_head = share_lm_head
        self.projections = None
        if not share_lm_head:
            self.projections = nn.ModuleList([nn.Linear(hidden, vocab, bias=False) for _ in range(num_heads)])
            if lm_head is not None:
                for projection in self.projections:
                    projection.weight.data.copy_(lm_head.weight.data)

    def forward(self, hidden: torch.Tensor, lm_head: nn.Module) -> torch.Tensor:
        """hidden [..., H] -> logits [K, ..., V]."""
        outs = []
        for i, block in enumerate(self.blocks):
            projection = lm_head if self.share_lm_head else self.projections[i]
            outs.append(projection(block(hidden)))
        return torch.stack(outs)


def default_tree(num_heads: int, num_nodes: int, top_k: int) -> list[tuple[int, ...]]:
    """Rank paths chosen best-first under a prior: head d is right with probability 0.6 * 0.8^d,
    and the rank-r candidate holds a share proportional to (r + 1)^-1.5 of that. Extending a path
    multiplies its weight by a factor < 1, so the chosen set is closed under prefixes."""
    share_norm = sum((r + 1) ** -1.5 for r in range(top_k))

    def factor(depth: int, rank: int) -> float:
        return 0.6 * 0.8 ** depth * (rank + 1) ** -1.5 / share_norm

    heap = [(-factor(0, r), (r,)) for r in range(top_k)]
    heapq.heapify(heap)
    chosen = []
    while heap and len(chosen) < num_nodes:
        negative_weight, path = heapq.heappop(heap)
        chosen.append(path)
        if len(path) < num_heads:
            for r in range(top_k):
                heapq.heappush(heap, (negative_weight * factor(len(path), r), path + (r,)))
    return sorted(chosen, key=lambda p: (len(p), p))


@dataclass
class MedusaOptions:
    draft: str = ""  # checkpoint directory, or "random" (zero-init ResBlocks + seeded noise)
    num_heads: int = 5
    tree_nodes: int = 63  # size of the default tree (draft nodes, root excluded)
    tree_top_k: int = 10  # ranks per head the default tree may use
    tree: str = ""  # optional JSON file: a list of rank paths, e.g. [[0], [1], [0, 0], ...]
    share_lm_head: bool = True
    typical: bool = False  # typical acceptance: LOSSY
    typical_epsilon: float = 0.09  # posterior threshold
    typical_delta: float = 0.3  # entropy-scaled threshold (alpha in the reference code)
    seed: int = 0


class MedusaProposer(Proposer):
    def __init__(self, heads: MedusaHeads, adapter, paths: list[tuple[int, ...]], options: MedusaOptions):
        self.heads, self.lm_head, self.device = heads, adapter.lm_head, adapter.device
        self.paths = paths
        index = {path: i for i, path in enumerate(paths, start=1)}
        self.parents = [index.get(path[:-1], 0) for path in paths]
        self.depth_of = torch.tensor([len(p) - 1 for p in paths], device=self.device)  # head of each node
        self.rank_of = torch.tensor([p[-1] for p in paths], device=self.device)
        self.max_rank = max(p[-1] for p in paths) + 1
        if options.typical:
            self.acceptance_rule = functools.partial(accept_typical, epsilon=options.typical_epsilon,
                                                     delta=options.typical_delta)

    def start(self, adapter, prompt, prefill, first_token):
        self.last_hidden = prefill.hidden[-1]  # h_t that predicted the root token

    def absorb(self, result):
        self.last_hidden = result.path_hidden[-1]

    @torch.no_grad()
    def propose(self, emitted, budget):
        logits = self.heads(self.last_hidden, self.lm_head)  # [K, V]
        candidates = logits.topk(self.max_rank, dim=-1).indices  # [K, max_rank]
        return DraftTree(candidates[self.depth_of, self.rank_of], list(self.parents))


class Medusa(DraftMethod):
    name = "medusa"
    Options = MedusaOptions

    def is_lossless(self) -> bool:
        return not self.options.typical

    def tree_paths(self) -> list[tuple[int, ...]]:
        opts = self.options
        if opts.tree:
            with open(opts.tree) as handle:
                paths = sorted((tuple(p) for p in json.load(handle)), key=lambda p: (len(p), p))
            missing = [p for p in paths if len(p) > 1 and p[:-1] not in set(paths)]
            if missing or any(len(p) > opts.num_heads for p in paths):
                raise ValueError(f"medusa tree {opts.tree}: every path's prefix must be in the tree and no path "
                                 f"may be deeper than num_heads={opts.num_heads} (bad: {missing[:3]})")
            return paths
        return default_tree(opts.num_heads, opts.tree_nodes, opts.tree_top_k)

    def build_draft(self, adapter) -> MedusaHeads:
        return MedusaHeads(adapter.hidden_size, adapter.vocab_size, self.options.num_heads,
                           self.options.share_lm_head, adapter.lm_head)

    def randomize(self, heads) -> None:
        for block in heads.blocks:  # zero-init heads would all copy the lm_head: perturb them
            nn.init.normal_(block.linear.weight, std=0.05)

    def prepare(self, adapter):
        self.heads = self.load_draft_network(adapter)
        self.paths = self.tree_paths()

    def make_proposer(self, adapter, context):
        return MedusaProposer(self.heads, adapter, self.paths, self.options)

    def make_trainer(self, draft: nn.Module, lm_head: nn.Module):
        return MedusaTrainer(draft, lm_head)


class MedusaTrainer:
    """Head i at position t: cross-entropy against token t+i+2; the target stays frozen."""

    def __init__(self, heads: MedusaHeads, lm_head: nn.Module):
        self.heads, self.lm_head = heads, lm_head  # the target's lm_head, frozen

    def _per_head(self, features):
        ids, hidden, mask = features.input_ids, features.hidden, features.loss_mask
        logits = self.heads(hidden, self.lm_head)  # [K, T, V]
        for head in range(logits.shape[0]):
            offset = head + 2
            if ids.shape[0] <= offset:
                return
            label_positions = torch.arange(offset, ids.shape[0], device=ids.device)
            valid = mask[label_positions]  # the predicted token is part of the answer
            yield head, logits[head, : ids.shape[0] - offset][valid], ids[label_positions][valid]

    def loss(self, features):
        total, logs = 0.0, {}
        for head, logits, labels in self._per_head(features):
            if labels.numel() == 0:
                continue
            head_loss = nn.functional.cross_entropy(logits.float(), labels)
            # The reference weights head i by 0.8^i: near heads matter most for acceptance.
            total = total + 0.8 ** head * head_loss
            logs[f"loss_head{head}"] = float(head_loss.detach())
        return total, logs

    @torch.no_grad()
    def accuracy(self, features, max_depth: int = 5):
        return {f"head{head}": (int((logits.argmax(-1) == labels).sum()), int(labels.numel()))
                for head, logits, labels in self._per_head(features) if head < max_depth}
