"""EAGLE-3's training: training-time test (paper section 3.2; the authors' eagle/traineagle3/).

Step 0 is teacher forcing: at position i the draft reads fc(f_i) (the target's three layer
inputs) and the embedding of token i + 1, and is scored against the target's distribution at
i + 1. Step s (s = 1 .. ttt_steps - 1) feeds every position its own step-(s-1) output in place
of the feature, with the embedding of token i + 1 + s, at position i + s, scored against the
target at i + 1 + s: the draft trains on the inputs it meets deeper in a draft tree.

Attention during the unroll is the reference's: the query of position i at step s sees the
step-0 entries 0..i (causal, target-feature based) and its own chain's entries of steps 1..s
(one per step, the diagonal) — what a tree node sees at inference: the committed prefix and
its ancestors. We keep the steps' keys/values in a cache and give the layer that mask.

Loss (no feature regression): per step, the forward KL / soft cross-entropy
-sum_v p_target(v) log q_draft(v) over the draft vocabulary, p_target being the target's
softmax restricted (renormalised) to the draft vocabulary; positions whose target top-1 token is
outside the draft vocabulary, or outside the answer, count zero; the sum over positions is
divided by the number of positions (the reference's `.mean()` over the sequence). Steps are
weighted 0.8^s and summed (the reference's main.py). Which positions count follows this
package's EAGLE trainers: loss_mask at the scored (target) position.

Draft vocabulary (the reference's `scandata`): the draft_vocab_size most frequent answer tokens
of the training data, sorted by id (d2t = id - index, t2d = membership); we add the stop tokens
and, when the data has fewer distinct tokens, fill up with the lowest unused ids.
"""

from __future__ import annotations

import torch
from torch import nn

from methods.eagle2 import additive_mask
from vispec_bench.drafts.vocab import frequent_tokens
from vispec_bench.errors import InputError

STEP_WEIGHT = 0.8  # loss weight of unrolled step s: 0.8 ** s


def fit_vocabulary(draft, answer_rows, stop_ids) -> None:
    size = draft.draft_vocab_size
    chosen = frequent_tokens(answer_rows, size, list(stop_ids))[:size]
    if chosen.numel() < size:
        unused = torch.ones(draft.t2d.shape[0], dtype=torch.bool)
        unused[chosen] = False
        chosen = torch.cat([chosen, unused.nonzero()[:size - chosen.numel(), 0]]).sort().values
    draft.set_vocabulary(chosen)


def unroll_mask(num: int, step: int, device) -> torch.Tensor:
    """bool [num, num * (step + 1)]: step-0 entries causally, then the diagonal of each later step."""
    eye = torch.eye(num, dtype=torch.bool, device=device)
    causal = torch.ones(num, num, dtype=torch.bool, device=device).tril()
    return torch.cat([causal] + [eye] * step, dim=1)


class Eagle3Trainer:
    """Training-time test of an Eagle3Draft on one sequence at a time."""

    def __init__(self, draft, lm_head: nn.Module, options):
        from transformers import DynamicCache

        self.draft = draft
        self.lm_head = lm_head  # the target's, frozen (float32)
        self.options = options
        self._new_cache = DynamicCache

    def unroll(self, features, steps: int):
        """Yields (step s, draft hidden [n, H], scored target positions [n], valid [n]) for s < steps;
        row i is the chain started at position i (n = T - 1 rows)."""
        if features.layer_features is None:
            raise InputError("eagle3 training needs the target's intermediate-layer features; the teacher "
                             "features carry none (the method's prepare_teacher asks the adapter for them)")
        length = features.input_ids.shape[0]
        num = length - 1
        device = features.layer_features.device
        rows = torch.arange(num, device=device)
        hidden = self.draft.fuse(features.layer_features[:-1])  # [n, H]
        cache = self._new_cache()
        for step in range(steps):
            scored = rows + 1 + step  # the token whose embedding enters = the target position scored
            valid = scored < length
            token_embeds = features.input_embeds[scored.clamp(max=length - 1)] * valid[:, None]  # [n, H]
            positions = (rows + step)[None]
            mask = additive_mask(unroll_mask(num, step, device), hidden.dtype)
            out = self.draft.midlayer(token_embeds[None], hidden[None], self.draft.rotary_emb(hidden[None], positions),
                                      mask, cache)[0]
            yield step, out, scored.clamp(max=length - 1), valid
            hidden = out

    def _target(self, features):
        """(target probabilities over the draft vocabulary [T, Vd], target top-1 id [T], in-vocab [T])."""
        with torch.no_grad():
            logits = self.lm_head(features.hidden).float()  # [T, V]
            top = logits.argmax(-1)
            t2d = self.draft.t2d.to(logits.device)
            return torch.softmax(logits[:, t2d], dim=-1), top, t2d[top]

    def loss(self, features) -> tuple[torch.Tensor | float, dict]:
        if features.input_ids.shape[0] < 2:
            return 0.0, {}
        target_probs, _, in_vocab = self._target(features)
        total, logs = 0.0, {}
        for step, out, scored, valid in self.unroll(features, self.options.ttt_steps):
            weight = (valid & features.loss_mask[scored] & in_vocab[scored]).float()  # [n]
            log_q = torch.log_softmax(self.draft.logits(out).float(), dim=-1)  # [n, Vd]
            step_loss = -(weight * (target_probs[scored] * log_q).sum(-1)).sum() / out.shape[0]
            total = total + STEP_WEIGHT ** step * step_loss
            logs[f"loss_step{step}"] = float(step_loss.detach())
        return total, logs

    @torch.no_grad()
    def accuracy(self, features, max_depth: int = 3) -> dict[str, tuple[int, int]]:
        """Top-1 agreement of the draft (mapped to target ids) with the target's argmax at unrolled
        step 0 .. max_depth - 1 ("depth1" = teacher-forced), over answer positions."""
        if features.input_ids.shape[0] < 2:
            return {}
        _, target_top, _ = self._target(features)
        target_ids = self.draft.target_ids()
        result = {}
        for step, out, scored, valid in self.unroll(features, min(max_depth, self.options.ttt_steps)):
            mask = valid & features.loss_mask[scored]
            draft_top = target_ids[self.draft.logits(out[mask]).argmax(-1)]
            result[f"depth{step + 1}"] = (int((draft_top == target_top[scored][mask]).sum()), int(mask.sum()))
        return result
