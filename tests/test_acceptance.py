"""The acceptance rule keeps the target's distribution exactly (small vocabulary, many draws)."""

import math

import pytest
import torch

from vispec_bench.engine.acceptance import SamplingConfig, accept, target_probs
from vispec_bench.engine.draft_tree import DraftTree


def _chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit, p-value by the Wilson-Hilferty normal approximation."""
    n = counts.sum()
    support = probs > 0
    expected = probs[support] * n
    stat = float(((counts[support] - expected) ** 2 / expected).sum())
    dof = int(support.sum()) - 1
    z = ((stat / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def _first_token_counts(logits, tree, config, draws, seed=0):
    generator = torch.Generator().manual_seed(seed)
    counts = torch.zeros(logits.shape[-1])
    for _ in range(draws):
        path, closing = accept(logits, tree, config, generator)
        token = tree.tokens[path[1] - 1].item() if len(path) > 1 else closing
        counts[token] += 1
    return counts


@pytest.mark.parametrize("config", [SamplingConfig(1.0), SamplingConfig(0.7, top_p=0.9), SamplingConfig(1.3, top_k=5)])
def test_point_mass_tree_keeps_the_target_distribution(config):
    torch.manual_seed(1)
    vocab = 8
    logits = torch.randn(4, vocab) * 1.5  # root + 3 draft nodes
    tree = DraftTree(torch.tensor([0, 3, 5]), [0, 0, 0])  # three deterministic children of the root
    counts = _first_token_counts(logits, tree, config, draws=6000)
    assert _chi_square_p_value(counts, target_probs(logits[0], config)) > 1e-3
    # Processing is applied: tokens cut by top-k/top-p never appear.
    assert (counts[target_probs(logits[0], config) == 0] == 0).all()


def test_sampled_draft_with_probabilities_keeps_the_target_distribution():
    torch.manual_seed(2)
    vocab = 6
    logits = torch.randn(2, vocab)
    config = SamplingConfig(1.0)
    q = torch.softmax(torch.randn(vocab), -1)
    generator = torch.Generator().manual_seed(3)
    counts = torch.zeros(vocab)
    for _ in range(6000):
        x = int(torch.multinomial(q, 1, generator=generator))
        tree = DraftTree(torch.tensor([x]), [0], q[None])
        path, closing = accept(logits, tree, config, generator)
        counts[x if len(path) > 1 else closing] += 1
    assert _chi_square_p_value(counts, target_probs(logits[0], config)) > 1e-3


def test_greedy_follows_the_argmax_child_and_closes_with_the_argmax():
    logits = torch.full((4, 5), -5.0)
    logits[0, 2] = 5  # root wants 2
    logits[2, 4] = 5  # node 2 (token 2) wants 4
    logits[3, 1] = 5
    tree = DraftTree(torch.tensor([1, 2, 3]), [0, 0, 2])  # node 3 (token 3) under node 2
    path, closing = accept(logits, tree, SamplingConfig(), None)
    assert path == [0, 2] and closing == 4


def test_top_p_matches_hf_warper():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    logits = torch.randn(3, 50)
    ours = target_probs(logits, SamplingConfig(0.7, top_p=0.8))
    hf = TopPLogitsWarper(0.8)(None, TemperatureLogitsWarper(0.7)(None, logits.clone())).softmax(-1)
    assert torch.allclose(ours, hf, atol=1e-6)
