"""Draft trees: what a proposer returns and what the engine verifies in one target forward.

Node 0 of the verify input is the root: the last emitted token, not yet in the target's
cache. Node i >= 1 is draft token tokens[i - 1], whose parent is parents[i - 1] < i (parents
come before children, so an accepted path is an ascending list of node indices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch


@dataclass
class DraftTree:
    tokens: torch.Tensor  # [m] draft token ids
    parents: list[int]  # [m] parent node index of each draft token (0 = the root)
    draft_probs: torch.Tensor | None = None  # [m, V] distribution each token was sampled from; None = chosen deterministically
    # Structure a builder already holds (DynamicTree: on the device), handed over so that it is not
    # recomputed, nor copied to the device again; None = computed from `parents` on first use.
    ancestors: torch.Tensor | None = field(default=None, repr=False, compare=False)  # [n, n] as ancestor_mask()
    known_depths: list[int] | None = field(default=None, repr=False, compare=False)  # [n] as depths

    def __post_init__(self):
        if len(self.parents) != self.tokens.shape[0]:
            raise ValueError(f"a draft tree needs one parent per token: {self.tokens.shape[0]} tokens, "
                             f"{len(self.parents)} parents")
        for i, parent in enumerate(self.parents, start=1):
            if not 0 <= parent < i:
                raise ValueError(f"node {i} has parent {parent}; parents must precede their children")
        if self.ancestors is not None and tuple(self.ancestors.shape) != (self.num_nodes, self.num_nodes):
            raise ValueError(f"an ancestor mask of shape {tuple(self.ancestors.shape)} for {self.num_nodes} nodes")
        if self.known_depths is not None and len(self.known_depths) != self.num_nodes:
            raise ValueError(f"{len(self.known_depths)} depths for {self.num_nodes} nodes")

    @property
    def num_nodes(self) -> int:
        """Nodes in the verify input, root included."""
        return len(self.parents) + 1

    @cached_property
    def depths(self) -> list[int]:
        if self.known_depths is not None:
            return self.known_depths
        return self.depth_tensor.tolist()

    @cached_property
    def depth_tensor(self) -> torch.Tensor:
        """[n] depth of each node (the root 0), on the ancestor mask's device: its row sums, minus 1."""
        return self.ancestor_mask().sum(dim=1) - 1

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    @cached_property
    def children(self) -> list[list[int]]:
        children = [[] for _ in range(self.num_nodes)]
        for node, parent in enumerate(self.parents, start=1):
            children[parent].append(node)
        return children

    def ancestor_mask(self) -> torch.Tensor:
        """[n, n] bool: True where node i may attend to node j (j is i or an ancestor of i).

        The builder's mask when it gave one (on its device), else built on the CPU from `parents`
        by pointer doubling: log2(n) gathers, no loop over nodes. Shared: do not modify it."""
        if self.ancestors is None:
            self.ancestors = ancestor_mask_of(self.parents)
        return self.ancestors

    def truncated(self, max_depth: int) -> "DraftTree":
        """The subtree of nodes at depth <= max_depth (used when few tokens remain to the cap)."""
        kept = [i for i in range(1, self.num_nodes) if self.depths[i] <= max_depth]
        new_index = {0: 0, **{old: new for new, old in enumerate(kept, start=1)}}
        rows = torch.tensor([i - 1 for i in kept], dtype=torch.long)
        ancestors = None
        if self.ancestors is not None:
            nodes = torch.tensor([0] + kept, dtype=torch.long, device=self.ancestors.device)
            ancestors = self.ancestors[nodes][:, nodes]
        return DraftTree(self.tokens[rows.to(self.tokens.device)], [new_index[self.parents[i - 1]] for i in kept],
                         None if self.draft_probs is None else self.draft_probs[rows.to(self.draft_probs.device)],
                         ancestors=ancestors, known_depths=[0] + [self.depths[i] for i in kept])


def parents_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """[m] parent of each draft node, from an ancestor mask [n, n] on its device: the one ancestor a level up."""
    depth = mask.sum(dim=1) - 1
    one_level_up = mask & (depth[None, :] == depth[:, None] - 1)
    return one_level_up[1:].to(torch.uint8).argmax(dim=1)


def ancestor_mask_of(parents: list[int]) -> torch.Tensor:
    """[n, n] bool ancestor mask (self included) of the tree with these parents (node 0 = the root).

    Pointer doubling: with reach = "ancestors at distance <= s" and jump = "the s-th ancestor"
    (clamped at the root), reach | reach[jump] is "distance <= 2 s"; ceil(log2(n)) steps suffice."""
    n = len(parents) + 1
    jump = torch.tensor([0] + list(parents), dtype=torch.long)
    reach = torch.eye(n, dtype=torch.bool)
    reach[torch.arange(n), jump] = True
    span = 1
    while span < n - 1:
        reach = reach | reach[jump]
        jump = jump[jump]
        span *= 2
    return reach


def chain(tokens: torch.Tensor, draft_probs: torch.Tensor | None = None) -> DraftTree:
    """A linear draft: each token's parent is the one before it."""
    return DraftTree(tokens, list(range(tokens.shape[0])), draft_probs)
