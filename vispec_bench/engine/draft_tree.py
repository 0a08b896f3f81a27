"""Draft trees: what a proposer returns and what the engine verifies in one target forward.

Node 0 of the verify input is the root: the last emitted token, not yet in the target's
cache. Node i >= 1 is draft token tokens[i - 1], whose parent is parents[i - 1] < i (parents
come before children, so an accepted path is an ascending list of node indices).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch


@dataclass
class DraftTree:
    tokens: torch.Tensor  # [m] draft token ids
    parents: list[int]  # [m] parent node index of each draft token (0 = the root)
    draft_probs: torch.Tensor | None = None  # [m, V] distribution each token was sampled from; None = chosen deterministically

    def __post_init__(self):
        if len(self.parents) != self.tokens.shape[0]:
            raise ValueError(f"a draft tree needs one parent per token: {self.tokens.shape[0]} tokens, "
                             f"{len(self.parents)} parents")
        for i, parent in enumerate(self.parents, start=1):
            if not 0 <= parent < i:
                raise ValueError(f"node {i} has parent {parent}; parents must precede their children")

    @property
    def num_nodes(self) -> int:
        """Nodes in the verify input, root included."""
        return len(self.parents) + 1

    @cached_property
    def depths(self) -> list[int]:
        depths = [0]
        for parent in self.parents:
            depths.append(depths[parent] + 1)
        return depths

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
        """[n, n] bool: True where node i may attend to node j (j is i or an ancestor of i)."""
        mask = torch.eye(self.num_nodes, dtype=torch.bool)
        for node, parent in enumerate(self.parents, start=1):
            mask[node] |= mask[parent]
        return mask

    def truncated(self, max_depth: int) -> "DraftTree":
        """The subtree of nodes at depth <= max_depth (used when few tokens remain to the cap)."""
        kept = [i for i in range(1, self.num_nodes) if self.depths[i] <= max_depth]
        new_index = {0: 0, **{old: new for new, old in enumerate(kept, start=1)}}
        rows = torch.tensor([i - 1 for i in kept], dtype=torch.long)
        return DraftTree(self.tokens[rows.to(self.tokens.device)], [new_index[self.parents[i - 1]] for i in kept],
                         None if self.draft_probs is None else self.draft_probs[rows.to(self.draft_probs.device)])


def chain(tokens: torch.Tensor, draft_probs: torch.Tensor | None = None) -> DraftTree:
    """A linear draft: each token's parent is the one before it."""
    return DraftTree(tokens, list(range(tokens.shape[0])), draft_probs)
