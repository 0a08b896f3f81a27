"""The decoding engine (seam 3 of docs/architecture.md): one loop for AR and every speculative method.

    prefill -> first token -> [propose -> verify tree in ONE target forward -> accept
    -> commit path to the KV cache -> emit accepted + closing token] until EOS or the cap.

AR is this loop with no proposer: each round verifies the root alone and emits one token, so
AR and every method share the adapter, cache, dtype, token cap and stop rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from vispec_bench.errors import InputError
from vispec_bench.engine.acceptance import SamplingConfig, accept, first_token
from vispec_bench.engine.adapter import PreparedPrompt, TargetAdapter
from vispec_bench.engine.engines import compiled_graphs, reserved_slack
from vispec_bench.engine.proposer import EmittedIds, Proposer, RoundResult
from vispec_bench.running.instruments import NULL_PHASE_TIMER, NullPhaseTimer, PhaseTimer, synchronize


@dataclass
class DecodeResult:
    new_ids: list[int]  # generated ids, EOS included when hit, never more than the cap
    accepted_lengths: list[int] = field(default_factory=list)  # per round: accepted draft tokens + 1
    draft_depths: list[int] = field(default_factory=list)  # per round: depth of the proposed tree (0 = none)
    prefill_s: float = 0.0  # vision encoder + prompt forward + first token
    decode_s: float = 0.0  # everything after the first token (draft prefill included)
    stop_reason: str = ""  # "eos" or "max_new_tokens"
    compiles: int = 0  # graphs compiled during this decode (timed): > 0 means compile time is in decode_s
    draft_cost: dict | None = None  # Proposer.draft_cost(), read after the timed region; None without a proposer

    @property
    def num_rounds(self) -> int:
        return len(self.accepted_lengths)


def decode(adapter: TargetAdapter, prompt: PreparedPrompt, proposer: Proposer | None, max_new_tokens: int,
           sampling: SamplingConfig, seed: int = 0,
           phase_timer: PhaseTimer | NullPhaseTimer = NULL_PHASE_TIMER) -> DecodeResult:
    """Decode one prompt (see _decode). The target's forwards capture exactly the layers the
    proposer reads (EAGLE-3's; none for AR and the other methods, so the baseline's timed forwards
    carry no capture), and the adapter's own setting is restored afterwards."""
    before = adapter.captured_layer_ids
    adapter.capture_layers(None if proposer is None else proposer.target_layers)
    try:
        return _decode(adapter, prompt, proposer, max_new_tokens, sampling, seed, phase_timer)
    finally:
        adapter.capture_layers(before)


@torch.no_grad()
def _decode(adapter: TargetAdapter, prompt: PreparedPrompt, proposer: Proposer | None, max_new_tokens: int,
            sampling: SamplingConfig, seed: int = 0,
            phase_timer: PhaseTimer | NullPhaseTimer = NULL_PHASE_TIMER) -> DecodeResult:
    """Decode one prompt. `phase_timer` (an instruments.PhaseTimer) splits each round into
    draft / verify / accept_commit time; it synchronises at every phase, so it is for a
    separate profiling pass, never for the timed run (whose default null timer does nothing)."""
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = adapter.device
    generator = None if sampling.greedy else torch.Generator(device=device).manual_seed(seed)
    eos = set(adapter.eos_token_ids)
    # Static engines: cache room for the prompt, the cap and the largest block a round appends
    # (a no-op once the runner has reserved for its largest prompt); compiled: the verify sizes.
    adapter.reserve(int(prompt.input_ids.shape[0]) + max_new_tokens + reserved_slack(proposer))
    adapter.engine.register_bucket(1)
    if proposer is not None and proposer.max_verify_tokens:
        adapter.engine.register_bucket(proposer.max_verify_tokens)
    graphs_before = compiled_graphs()

    synchronize(device)
    t_start = time.perf_counter()
    prefill = adapter.prefill(prompt)
    emitted = [first_token(prefill.logits, sampling, generator)]
    synchronize(device)
    t_first = time.perf_counter()

    result = DecodeResult(new_ids=emitted)
    if emitted[0] in eos or max_new_tokens == 1:
        result.stop_reason = "eos" if emitted[0] in eos else "max_new_tokens"
        result.prefill_s = t_first - t_start
        result.compiles = compiled_graphs() - graphs_before
        result.draft_cost = None if proposer is None else proposer.draft_cost()  # never started: nothing drafted
        return result
    rule = accept
    emitted_view = EmittedIds(emitted)  # proposers read the output through it, never change it
    if proposer is not None:
        rule = proposer.acceptance_rule or accept
        proposer.start(adapter, prompt, prefill, emitted[0])

    while True:
        phase_timer.start_round()
        budget = max_new_tokens - len(emitted)
        tree = proposer.propose(emitted_view, budget) if proposer is not None else None
        if tree is not None and tree.max_depth >= budget:
            tree = tree.truncated(budget - 1)  # a round can emit at most `budget` tokens
        phase_timer.mark("draft")
        # The root id is a fill on the device, not a host tensor copied over; a DynamicTree's
        # depths and mask are already there (draft_tree.DraftTree), so nothing waits on the device.
        root = torch.full((1,), emitted[-1], dtype=torch.long, device=device)
        if tree is None or tree.num_nodes == 1:
            verify_ids = root
            logits, hidden = adapter.forward(verify_ids)
            tree, depths, mask = None, None, None
        else:
            verify_ids = torch.cat([root, tree.tokens.to(device)])
            depths = tree.depth_tensor.to(device)
            mask = tree.ancestor_mask().to(device)
            logits, hidden = adapter.forward(verify_ids, depths, mask)
        phase_timer.mark("verify")
        path, closing = rule(logits, tree, sampling, generator)
        adapter.commit(path)

        path_tokens = verify_ids[path].tolist()
        num_before = len(emitted)
        for token in path_tokens[1:] + [closing]:
            emitted.append(token)
            if token in eos or len(emitted) >= max_new_tokens:
                result.stop_reason = "eos" if token in eos else "max_new_tokens"
                break
        # Tokens emitted this round: (len(path) - 1) accepted drafts + 1 closing token, unless EOS
        # or the cap cut the path; so sum(accepted_lengths) + 1 == len(new_ids) always holds.
        result.accepted_lengths.append(len(emitted) - num_before)
        result.draft_depths.append(0 if tree is None else tree.max_depth)
        phase_timer.mark("accept_commit")
        if result.stop_reason:
            break
        if proposer is not None:
            proposer.absorb(RoundResult(path, path_tokens, hidden[path], closing))
            phase_timer.mark("draft")

    synchronize(device)
    t_end = time.perf_counter()
    result.prefill_s = t_first - t_start
    result.decode_s = t_end - t_first
    result.compiles = compiled_graphs() - graphs_before
    result.draft_cost = None if proposer is None else proposer.draft_cost()  # after the clock stopped
    return result
