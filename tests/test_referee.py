"""The float32 referee on a real (tiny, random-init) LLaVA: a divergence is excused only when the
two tokens are closer in float32 than rounding moved the logits."""

import torch

from vispec_bench.engine.adapter import make_adapter
from vispec_bench.models.loading import load_model
from vispec_bench.plugins.suite import make_suite
from vispec_bench.running.referee import Float32Referee


def _adapter(dtype):
    loaded = load_model("tiny-llava", dtype, "cpu", seed=0)
    return make_adapter(loaded.model, loaded.processor)


def test_referee_excuses_rounding_sized_gaps_and_fails_the_rest():
    sample = make_suite("easyvqa", "short").select(1, 0)[0]
    low = _adapter(torch.bfloat16)
    referee = Float32Referee(lambda: _adapter(torch.float32))
    prompt = low.build_prompt(sample.messages, sample.images)
    prefix = [5, 6, 7]
    low_logits = low.teacher_forced_logits(prompt, prefix)[len(prefix)]  # [V] bfloat16
    reference = referee.adapter.teacher_forced_logits(
        referee.adapter.build_prompt(sample.messages, sample.images), prefix)[len(prefix)]  # [V] float32
    order = torch.argsort(reference, descending=True)
    far = referee.judge(low_logits, sample, prefix, int(order[0]), int(order[-1]))
    assert far["verdict"] == "failure" and far["float32_pair_gap"] > far["logit_error"] > 0
    # the float32 gap between the top two against the real bf16 error at this position
    near = referee.judge(low_logits, sample, prefix, int(order[0]), int(order[1]))
    assert near["float32_margin"] == near["float32_pair_gap"]
    assert near["verdict"] == ("dtype_tie" if near["float32_pair_gap"] < near["logit_error"] else "failure")
    # a low-precision result that rounding moved by more than the gap is a tie
    shaken = reference + (near["float32_pair_gap"] + 0.1) * (torch.arange(reference.numel()) % 2)
    assert referee.judge(shaken, sample, prefix, int(order[0]), int(order[1]))["verdict"] == "dtype_tie"
    stopped = referee.judge(low_logits, sample, prefix, int(order[0]), None)  # one side stopped: never a tie
    assert stopped["verdict"] == "failure"
