"""The engine: AR equals HF generate; proposals never change the output, only the round count."""

import pytest
import torch

from conftest import easyvqa_samples, tiny_by_name, two_image_messages
from methods.oracle import OracleProposer
from vispec_bench.engine.acceptance import SamplingConfig
from vispec_bench.engine import decode as decode_module
from vispec_bench.engine.decode import decode
from vispec_bench.engine.proposer import Proposer
from vispec_bench.engine.draft_tree import DraftTree
from vispec_bench.running import instruments
from vispec_bench.running.instruments import PhaseTimer

GREEDY = SamplingConfig()


def _prompt(adapter, sample):
    return adapter.build_prompt(sample.messages, sample.images)


def test_ar_matches_hf_generate_greedy_on_every_tiny_vlm(tiny):
    loaded, adapter = tiny
    for sample in easyvqa_samples():
        prompt = _prompt(adapter, sample)
        ours = decode(adapter, prompt, None, 40, GREEDY)
        hf = loaded.model.generate(**prompt.model_inputs, max_new_tokens=40, do_sample=False)
        hf_ids = hf[0, prompt.input_ids.shape[0]:].tolist()
        assert ours.new_ids == hf_ids
        assert ours.accepted_lengths == [1] * (len(ours.new_ids) - 1)  # AR: tau exactly 1


def test_oracle_reproduces_ar_with_tau_depth_plus_one(tiny):
    _, adapter = tiny
    sample = easyvqa_samples()[0]
    prompt = _prompt(adapter, sample)
    ar = decode(adapter, prompt, None, 41, GREEDY)
    for depth in (1, 4):
        result = decode(adapter, prompt, OracleProposer(ar.new_ids, depth, False, adapter.vocab_size), 41, GREEDY)
        assert result.new_ids == ar.new_ids
        if ar.stop_reason == "max_new_tokens":
            # 40 tokens after the first, depth + 1 per round: every full round is perfect.
            assert result.accepted_lengths == [depth + 1] * (40 // (depth + 1)) + (
                [40 % (depth + 1)] if 40 % (depth + 1) else [])
        assert sum(result.accepted_lengths) + 1 == len(result.new_ids)
        assert sum(result.accepted_lengths) / len(result.accepted_lengths) > 1


def test_wrong_proposals_give_ar_ids_with_tau_one(tiny):
    _, adapter = tiny
    prompt = _prompt(adapter, easyvqa_samples()[1])
    ar = decode(adapter, prompt, None, 32, GREEDY)
    result = decode(adapter, prompt, OracleProposer(ar.new_ids, 5, True, adapter.vocab_size), 32, GREEDY)
    assert result.new_ids == ar.new_ids
    assert result.accepted_lengths == [1] * len(ar.accepted_lengths)
    assert all(depth > 0 for depth in result.draft_depths[:-1])  # it did propose, and was rejected


class BranchingOracle(Proposer):
    """A tree whose right path hides behind wrong siblings: tests the tree mask, depth positions
    and the commit of a non-contiguous path (the accepted nodes are not a prefix of the input)."""

    def __init__(self, reference, vocab_size):
        self.reference, self.vocab_size = reference, vocab_size

    def propose(self, emitted, budget):
        good = self.reference[len(emitted):len(emitted) + 3]
        if not good:
            return None
        tokens, parents = [], []
        parent = 0
        for token in good:
            wrong = (token + 7) % self.vocab_size
            tokens += [wrong, token]  # the wrong sibling comes first, so the kept nodes are 2, 4, 6
            parents += [parent, parent]
            parent = len(tokens)  # the right token's node index
        return DraftTree(torch.tensor(tokens), parents)


def test_branching_tree_with_wrong_siblings_matches_ar(tiny):
    _, adapter = tiny
    prompt = _prompt(adapter, easyvqa_samples()[2])
    ar = decode(adapter, prompt, None, 30, GREEDY)
    result = decode(adapter, prompt, BranchingOracle(ar.new_ids, adapter.vocab_size), 30, GREEDY)
    assert result.new_ids == ar.new_ids
    assert max(result.accepted_lengths) == 4


class MeddlingProposer(Proposer):
    """Tries to rewrite the output it is shown, then proposes nothing."""

    def __init__(self):
        self.refusals = []

    def propose(self, emitted, budget):
        for meddle in (lambda: emitted.append(0), lambda: emitted.__setitem__(-1, 0), lambda: emitted.clear(),
                       lambda: emitted[:].append(0)):  # the last one changes a copy, which is allowed
            try:
                meddle()
            except (AttributeError, TypeError) as err:
                self.refusals.append(type(err).__name__)
        return None


def test_a_proposer_cannot_change_the_emitted_ids(tiny):
    _, adapter = tiny
    prompt = _prompt(adapter, easyvqa_samples()[0])
    ar = decode(adapter, prompt, None, 12, GREEDY)
    proposer = MeddlingProposer()
    result = decode(adapter, prompt, proposer, 12, GREEDY)
    assert result.new_ids == ar.new_ids
    assert len(proposer.refusals) == 3 * len(ar.accepted_lengths)  # append, item assignment, clear: every round


def test_timed_decode_adds_no_synchronisation_and_the_phase_timer_splits_every_round(monkeypatch):
    _, adapter = tiny_by_name("tiny-llava")
    prompt = _prompt(adapter, easyvqa_samples()[0])
    calls = {"engine": 0, "instruments": 0}
    monkeypatch.setattr(decode_module, "synchronize", lambda device: calls.__setitem__("engine", calls["engine"] + 1))
    monkeypatch.setattr(instruments, "synchronize",
                        lambda device: calls.__setitem__("instruments", calls["instruments"] + 1))
    oracle = decode(adapter, prompt, None, 12, GREEDY)
    proposer = OracleProposer(oracle.new_ids, 3, False, adapter.vocab_size)
    timed = decode(adapter, prompt, proposer, 12, GREEDY)
    assert calls == {"engine": 6, "instruments": 0}  # start, first token, end; twice; the null timer adds none
    timer = PhaseTimer("cpu")
    profiled = decode(adapter, prompt, OracleProposer(oracle.new_ids, 3, False, adapter.vocab_size), 12, GREEDY,
                      phase_timer=timer)
    assert profiled.new_ids == timed.new_ids
    assert len(timer.rounds) == timed.num_rounds and calls["instruments"] > 0
    assert all({"draft", "verify", "accept_commit"} <= set(phases) for phases in timer.rounds)


@pytest.mark.parametrize("name", ["tiny-llava-next", "tiny-qwen25vl", "tiny-llava"])
def test_two_image_prompt_decodes_and_oracle_matches(name):
    loaded, adapter = tiny_by_name(name)
    images = [s.images[0] for s in easyvqa_samples()[:2]]
    prompt = adapter.build_prompt(two_image_messages(), images)
    assert len(prompt.image_spans) == 2
    ar = decode(adapter, prompt, None, 24, GREEDY)
    hf = loaded.model.generate(**prompt.model_inputs, max_new_tokens=24, do_sample=False)
    assert ar.new_ids == hf[0, prompt.input_ids.shape[0]:].tolist()
    result = decode(adapter, prompt, OracleProposer(ar.new_ids, 3, False, adapter.vocab_size), 24, GREEDY)
    assert result.new_ids == ar.new_ids


def test_token_cap_and_eos_are_the_same_stop_rule_for_every_method():
    _, adapter = tiny_by_name("tiny-llava")
    prompt = _prompt(adapter, easyvqa_samples()[0])
    for cap in (1, 2, 7):
        ar = decode(adapter, prompt, None, cap, GREEDY)
        oracle = decode(adapter, prompt, OracleProposer(ar.new_ids + [0] * 10, 4, False, adapter.vocab_size), cap,
                        GREEDY)
        assert len(ar.new_ids) <= cap and oracle.new_ids == ar.new_ids


def test_qwen25vl_decode_positions_continue_from_hf_rope_delta():
    """After an image, Qwen2.5-VL's next text position is max(3-D positions) + 1, not the token count."""
    _, adapter = tiny_by_name("tiny-qwen25vl")
    prompt = _prompt(adapter, easyvqa_samples()[0])
    prefill = adapter.prefill(prompt)
    grid = prompt.model_inputs["image_grid_thw"][0].tolist()  # [t, h, w] patches; merged 2x2
    num_image_tokens = grid[0] * grid[1] * grid[2] // 4
    # The image span occupies max(t, h/2, w/2) positions instead of num_image_tokens.
    assert prefill.position_offset == max(grid[0], grid[1] // 2, grid[2] // 2) - num_image_tokens
    assert prefill.position_offset < 0
