"""A reduced draft vocabulary (EAGLE-3's token map): the draft scores only N frequent tokens.

A draft step ends in a vocabulary projection; at SmolLM2's 49,152 tokens that projection is
about a fifth of the *target's* parameters, so on a CPU every draft step costs far more than
the draft layer itself. With a token map the draft multiplies by N rows of the target's frozen
lm_head (no new weights) and proposes only those tokens. Verification is untouched — the target
still scores its full vocabulary — so decoding stays lossless; a token outside the map simply
cannot be proposed and is emitted by the target as the round's bonus token.

The map is data, not architecture: it is fitted to the training answers (the N most frequent
answer tokens plus the stop tokens), stored in the draft checkpoint as the buffer `token_map`,
and a loaded checkpoint always brings its own map.
"""

from __future__ import annotations

from collections import Counter

import torch

BUFFER = "token_map"


def frequent_tokens(rows, size: int, always: list[int]) -> torch.Tensor:
    """The `size` most frequent tokens of the rows' `answer_ids` (ties by id) plus `always`, sorted."""
    counts: Counter = Counter()
    for answer_ids in rows:
        counts.update(answer_ids)
    chosen = set(always)
    for token, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        if len(chosen) >= size:
            break
        chosen.add(token)
    return torch.tensor(sorted(chosen), dtype=torch.long)


def token_map_of(module: torch.nn.Module) -> torch.Tensor | None:
    return getattr(module, BUFFER, None)


def set_token_map(module: torch.nn.Module, token_map: torch.Tensor | None) -> None:
    """Attach (or remove, with None) the map as a persistent buffer, so checkpoints carry it."""
    if BUFFER in module._buffers:
        del module._buffers[BUFFER]
    module.register_buffer(BUFFER, None if token_map is None else token_map.to(torch.long).clone())


def head_weight(lm_head_weight: torch.Tensor, token_map: torch.Tensor | None) -> torch.Tensor:
    """The rows of the target's lm_head the draft scores."""
    if token_map is None:
        return lm_head_weight
    return lm_head_weight[token_map.to(lm_head_weight.device)]


def to_vocab(indices: torch.Tensor, token_map: torch.Tensor | None) -> torch.Tensor:
    """Draft-vocabulary indices -> target token ids."""
    return indices if token_map is None else token_map.to(indices.device)[indices]


def to_draft(token_ids: torch.Tensor, token_map: torch.Tensor | None, vocab_size: int) -> torch.Tensor:
    """Target token ids -> draft-vocabulary indices; -1 for tokens outside the map."""
    if token_map is None:
        return token_ids
    inverse = torch.full((vocab_size,), -1, dtype=torch.long, device=token_ids.device)
    inverse[token_map.to(token_ids.device)] = torch.arange(token_map.numel(), device=token_ids.device)
    return inverse[token_ids]
