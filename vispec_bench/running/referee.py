"""The float32 referee: is a bf16/fp16 divergence from AR rounding, or a bug?

In bf16/fp16 a tree forward and a one-token forward round differently, so a lossless method may
leave AR's path where the target's top logits are a rounding error apart. A fixed ULP rule
cannot tell that from a bug (three different drafts have left AR at one position with a 3-ULP
margin), so the referee measures both sides at the divergence point, outside the timed region:

- the target's logits on the common prefix (the prompt and AR's ids before the divergence),
  teacher-forced, in the run's dtype and in float32;
- logit_error: the largest |low-precision − float32| logit difference over the whole vocabulary
  at that position — how far rounding moved the logits there;
- float32_pair_gap: |z_AR-token − z_method-token| in float32 — how far apart the two tokens
  that diverged really are (the float32 top-two margin, `float32_margin`, when they are the top two).

Verdict: `dtype_tie` when float32_pair_gap < logit_error (rounding of that size can swap the two
tokens), `failure` otherwise (also when one side stopped and the other did not). Both numbers
are kept in the record. The float32 copy of the target is loaded on the first low-precision
divergence of a run, and kept for the rest of it.
"""

from __future__ import annotations

from typing import Callable

import torch


class Float32Referee:
    def __init__(self, load_float32_adapter: Callable[[], object]):
        self._load = load_float32_adapter
        self._adapter = None

    @property
    def adapter(self):
        if self._adapter is None:
            self._adapter = self._load()
        return self._adapter

    def judge(self, low_logits: torch.Tensor, sample, prefix_ids: list[int], ar_token: int | None,
              method_token: int | None) -> dict:
        """`low_logits` [V]: the target's logits in the run's dtype after the prompt and `prefix_ids`."""
        adapter = self.adapter
        prompt = adapter.build_prompt(sample.messages, sample.images)  # float32 pixel values too
        reference = adapter.teacher_forced_logits(prompt, prefix_ids)[len(prefix_ids)].float()  # [V]
        logit_error = float((low_logits.float() - reference).abs().max())
        top2 = torch.topk(reference, 2).values
        pair_gap = None
        if ar_token is not None and method_token is not None:
            pair_gap = float((reference[ar_token] - reference[method_token]).abs())
        tie = pair_gap is not None and pair_gap < logit_error
        return {"verdict": "dtype_tie" if tie else "failure", "float32_margin": float(top2[0] - top2[1]),
                "float32_pair_gap": pair_gap, "logit_error": logit_error, "logit_error_over": "whole vocabulary"}
