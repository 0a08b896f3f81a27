"""The profiling pass's split of a round into target forward, draft forwards and the harness."""

import pytest
import torch
from torch import nn

from conftest import GREEDY, easyvqa_samples, prepared, tiny_by_name
from vispec_bench.engine.decode import decode
from vispec_bench.results.metrics import round_breakdown
from vispec_bench.running import instruments
from vispec_bench.running.instruments import PhaseTimer


class Clock:
    def __init__(self):
        self.now = 0.0

    def advance(self, seconds):
        self.now += seconds


class Slow(nn.Module):
    def __init__(self, clock, seconds):
        super().__init__()
        self.clock, self.seconds = clock, seconds

    def forward(self, x=None):
        self.clock.advance(self.seconds)
        return x


class FakeAdapter:
    def __init__(self, clock):
        self.clock = clock
        self.model = nn.ModuleDict({"embed": Slow(clock, 0.7)})

    def forward(self, ids=None):
        self.clock.advance(3.0)
        return ids


class FakeProposer:
    draft_forward_methods = ("_top",)

    def __init__(self, adapter, clock):
        self.clock = clock
        self.draft = Slow(clock, 2.0)
        self.embed = adapter.model["embed"]  # the target's module: harness, not a draft forward

    def _top(self):
        self.clock.advance(0.5)
        return self.draft()  # nested in a timed call: counted once


def test_forwards_are_timed_and_the_rest_is_the_harness(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(instruments.time, "perf_counter", lambda: clock.now)
    adapter = FakeAdapter(clock)
    proposer = FakeProposer(adapter, clock)
    timer = PhaseTimer("cpu")
    with timer.instrument(adapter, proposer):
        adapter.forward()  # before any round (prefill's place): not counted
        timer.start_round()
        clock.advance(1.0)
        proposer.draft()
        proposer._top()
        proposer.embed()
        timer.mark("draft")  # 1 + 2 + 2.5 + 0.7
        adapter.forward()
        clock.advance(0.25)
        timer.mark("verify")  # 3.25
        clock.advance(1.0)
        timer.mark("accept_commit")
    totals = timer.totals()
    assert totals["draft_s"] == pytest.approx(6.2) and totals["verify_s"] == pytest.approx(3.25)
    assert totals["target_forward_s"] == pytest.approx(3.0)
    assert totals["draft_forward_s"] == pytest.approx(4.5)
    assert totals["harness_s"] == pytest.approx(1.0 + 0.7 + 0.25 + 1.0)
    assert totals["harness_share"] == pytest.approx(2.95 / 10.45)
    # Everything is back as it was: nothing timed any more.
    assert "forward" not in vars(adapter) and "forward" not in vars(proposer.draft) and "_top" not in vars(proposer)
    timer.start_round()
    adapter.forward()
    proposer._top()
    timer.mark("draft")
    assert timer.totals()["target_forward_s"] == pytest.approx(3.0)


def test_a_timer_without_instrument_reports_no_harness_share():
    assert "harness_share" not in PhaseTimer("cpu").totals()


def test_breakdown_summary_pools_the_harness_over_records():
    records = [{"round_breakdown": {"draft_s": 1.0, "verify_s": 2.0, "accept_commit_s": 1.0, "num_rounds": 2,
                                    "target_forward_s": 1.5, "draft_forward_s": 0.5, "harness_s": 2.0}},
               {"round_breakdown": {"draft_s": 3.0, "verify_s": 2.0, "accept_commit_s": 1.0, "num_rounds": 2,
                                    "target_forward_s": 1.0, "draft_forward_s": 4.0, "harness_s": 1.0}}]
    summary = round_breakdown(records)
    assert summary["harness_share"] == pytest.approx(3.0 / 10.0)
    assert summary["target_forward_ms_per_round"] == pytest.approx(1000 * 2.5 / 4)
    # Records of an earlier profiling pass (no forward times): the phases alone.
    earlier = [{"round_breakdown": {k: v for k, v in r["round_breakdown"].items()
                                    if k in ("draft_s", "verify_s", "accept_commit_s", "num_rounds")}}
               for r in records]
    assert "harness_share" not in round_breakdown(earlier + records)
    assert round_breakdown(earlier)["verify_ms_per_round"] == pytest.approx(1000 * 4.0 / 4)


@pytest.mark.parametrize("method, draft_work", [("eagle2", {"_top", "transform_features", "step", "eager_step"}),
                                                     ("medusa-dynamic", set())])
def test_an_instrumented_decode_emits_the_same_ids_and_times_both_forwards(method, draft_work):
    _, adapter = tiny_by_name("tiny-llava")
    built = prepared(method, adapter, draft="random")
    sample = easyvqa_samples()[0]
    prompt = adapter.build_prompt(sample.messages, sample.images)
    plain = decode(adapter, prompt, built.make_proposer(adapter, None), 12, GREEDY)
    timer = PhaseTimer("cpu")
    proposer = built.make_proposer(adapter, None)
    with timer.instrument(adapter, proposer):
        # EAGLE's vocabulary head + top-k and its feature hook run outside its module: timed as draft work.
        assert {name for name, value in vars(proposer).items()
                if callable(value) and not isinstance(value, nn.Module)} == draft_work
        profiled = decode(adapter, prompt, proposer, 12, GREEDY, phase_timer=timer)
    assert profiled.new_ids == plain.new_ids
    totals = timer.totals()
    assert totals["num_rounds"] == profiled.num_rounds
    assert totals["target_forward_s"] > 0 and totals["draft_forward_s"] > 0
    assert 0 < totals["harness_share"] < 1
    assert "forward" not in vars(adapter)
