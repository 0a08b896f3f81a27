"""EagleVLM (SpecVLM, Li et al., arXiv 2509.11815, section 3): the SpecVLM paper's EAGLE-2
baseline for VLMs. The same draft, tree, training recipe and pairing as EAGLE-2
(methods/eagle2.py) — image tokens enter the draft as any other pair (h_i, e_{i+1}) — with one
difference: the draft's decoder layer keeps its input layernorm (EAGLE-2 removes it, so the
fc output enters attention un-normed). The norm is an RMSNorm of the target family's layer,
initialised to ones and trained with the draft.

Its checkpoints are of their own kind ("eaglevlm"): an EAGLE-2 draft has no trained input
norm, and loading one here would change its function. The SpecVLM paper's tree (top-k 10,
total 60, depth 7) is `--method-args eaglevlm.depth=7 eaglevlm.top_k=10 eaglevlm.total_token=60`;
by default it takes the device's tree, as every EAGLE-family method does, so methods compared
on one device use the same tree. No code was published with the paper.
"""

from __future__ import annotations

from methods.eagle2 import Eagle2, EagleDraft, published_config


class EagleVLM(Eagle2):
    name = "eaglevlm"

    def build_draft(self, adapter, checkpoint=None) -> EagleDraft:
        return EagleDraft(adapter.text_config, published_config(checkpoint), input_norm=True)
