"""ViSpec (Kang et al., NeurIPS 2025): the EAGLE-2 draft made vision-aware.

It reuses EAGLE-2's draft, tree and training recipe (methods/eagle2.py) and adds:

(a) a vision adaptor (`imadpt`): num_q learned queries cross-attend (multi-head, no positional
    encoding) over one image's embeddings — the target's decoder inputs at that image's
    positions. Of the num_q outputs, the first num_q - 1 are compressed image tokens; the last
    is the image's global feature g.
(b) the splice: in the draft's input, the pairs that carry an image's tokens are replaced by
    the num_q - 1 compressed tokens, placed at that image's trailing positions; text after
    the image keeps its original positions, so the draft's positions have a gap where the image
    was (the draft's cache is shorter than the target's). With EAGLE's pairing — the pair at
    draft position i holds (h_i, e_{i+1}) — an image occupying token positions [s, e) keeps its
    compressed tokens at pair positions e - num_q ... e - 2, and pair positions s - 1 ...
    e - num_q - 1 disappear.
(c) the global feature: every later feature entering the draft (pair position >= e - 1, the
    pairs whose token follows the image; tree nodes and decode rounds included) is fused as
    img_fc(cat(h, g)) with the g of the latest image before it; img_fc = Linear(2H -> H)
    starts as [I | 0] with zero bias, so an EAGLE-2 draft loaded into ViSpec is unchanged.

Ablations are registry entries of this class with an option preset: `vispec-noadaptor`
(adaptor=false: no splice, image tokens enter as in EAGLE-2; global feature on) and
`vispec-noglobal` (global_feature=false: splice on, no fusion).

Training (ViSpec section 3.3): stage 1 is EAGLE-2 training on text (`train --method eagle2`);
stage 2 (`train --method vispec --init EAGLE2_CKPT`) trains on multimodal conversations whose
answers the target generated from long-answer prompts (`gen-data --prompt-suffix`). Against
shortcut learning from the target's features: uniform noise (U - 0.5) * 0.2 * 512 / seq_len on
the input features, and `mtp_steps` extra passes that feed the draft its own predicted features.

Qwen2.5-VL: the target verifies with 3-D mrope positions; the draft uses 1-D positions over the
original token indices, as the reference implementation does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vispec_bench.errors import InputError
from vispec_bench.drafts.checkpoints import DraftCheckpointError, load_matching
from vispec_bench.drafts.vocab import BUFFER, set_token_map
from methods.eagle2 import Eagle2, Eagle2Options, Eagle2Proposer, EagleDraft, EagleTrainer, published_config


class VisionAdaptor(nn.Module):
    """num_q learned queries in multi-head cross-attention over one image's embeddings."""

    def __init__(self, hidden: int, num_heads: int, num_q: int):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Parameter(torch.randn(num_q, hidden) * hidden ** -0.5)
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.o_proj = nn.Linear(hidden, hidden)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """image_embeds [n, H] -> [num_q, H]."""
        num_q, hidden = self.q.shape
        head_dim = hidden // self.num_heads
        q = self.q_proj(self.q.to(image_embeds.dtype)).view(num_q, self.num_heads, head_dim).transpose(0, 1)
        k = self.k_proj(image_embeds).view(-1, self.num_heads, head_dim).transpose(0, 1)  # [heads, n, d]
        v = self.v_proj(image_embeds).view(-1, self.num_heads, head_dim).transpose(0, 1)
        attended = nn.functional.scaled_dot_product_attention(q[None], k[None], v[None])[0]  # [heads, num_q, d]
        return self.o_proj(attended.transpose(0, 1).reshape(num_q, hidden))


class ViSpecDraft(EagleDraft):
    def __init__(self, text_config, num_q: int, published: dict | None = None):
        super().__init__(text_config, published)
        hidden = self.config.hidden_size
        self.img_fc = nn.Linear(2 * hidden, hidden)
        with torch.no_grad():  # [I | 0]: fusion starts as the identity on h
            self.img_fc.weight.zero_()
            self.img_fc.weight[:, :hidden].copy_(torch.eye(hidden))
            self.img_fc.bias.zero_()
        self.imadpt = VisionAdaptor(hidden, self.config.num_attention_heads, num_q)


@dataclass
class SplicedPairs:
    features: torch.Tensor  # [m, H] target features of the kept pairs
    token_embeds: torch.Tensor  # [m, H] next-token embeddings (compressed tokens at image pairs)
    positions: torch.Tensor  # [m] draft positions (original indices, with gaps)
    targets: torch.Tensor  # [m] index of the feature each pair predicts (position + 1)
    global_features: torch.Tensor | None  # [K, H] g of each image, None without the global feature
    fusion_starts: torch.Tensor  # [K] first pair position fused with each image's g (image end - 1)


def splice_pairs(draft: ViSpecDraft, hidden: torch.Tensor, input_embeds: torch.Tensor,
                 image_spans: list[tuple[int, int]], use_adaptor: bool, use_global: bool) -> SplicedPairs:
    """EAGLE pairs (h_i, e_{i+1}) at positions i for i < len(hidden), with ViSpec's splice.

    `input_embeds` has one more row than `hidden` when the caller appends the first generated
    token's embedding (decoding), or the same number (training on a full sequence: the last
    feature has no next token and forms no pair).
    """
    num_pairs = min(hidden.shape[0], input_embeds.shape[0] - 1)
    device = hidden.device
    positions = torch.arange(num_pairs, device=device)
    features, token_embeds = hidden[:num_pairs], input_embeds[1:num_pairs + 1]
    num_compressed = draft.imadpt.q.shape[0] - 1
    outputs = [draft.imadpt(input_embeds[start:end]) for start, end in image_spans] if image_spans else []
    keep = torch.ones(num_pairs, dtype=torch.bool, device=device)
    token_embeds = token_embeds.clone()
    if use_adaptor:
        for (start, end), out in zip(image_spans, outputs):
            if end - start < num_compressed:
                raise ValueError(f"an image of {end - start} tokens cannot hold {num_compressed} compressed tokens")
            compressed_from = max(end - 1 - num_compressed, 0)
            keep[max(start - 1, 0):compressed_from] = False  # pairs whose token is an image token
            token_embeds[compressed_from:end - 1] = out[num_compressed - (end - 1 - compressed_from):num_compressed].to(
                token_embeds.dtype)
    global_features = torch.stack([out[-1] for out in outputs]) if (use_global and outputs) else None
    fusion_starts = torch.tensor([end - 1 for _, end in image_spans], device=device, dtype=torch.long)
    return SplicedPairs(features[keep], token_embeds[keep], positions[keep], positions[keep] + 1,
                        global_features, fusion_starts)


def fuse_global(draft: ViSpecDraft, features: torch.Tensor, positions: torch.Tensor,
                global_features: torch.Tensor | None, fusion_starts: torch.Tensor) -> torch.Tensor:
    """img_fc(cat(h, g)) for pairs at or after an image's fusion start, with the latest such image's g."""
    if global_features is None:
        return features
    image_index = torch.searchsorted(fusion_starts, positions, right=True) - 1  # [n], -1 = before any image
    fused = draft.img_fc(torch.cat([features, global_features[image_index.clamp(min=0)].to(features.dtype)], -1))
    return torch.where((image_index >= 0)[:, None], fused, features)


@dataclass
class ViSpecOptions(Eagle2Options):
    num_q: int = 2  # adaptor queries: num_q - 1 compressed tokens per image + 1 global feature
    adaptor: bool = True  # splice compressed tokens in place of the image (off: vispec-noadaptor)
    global_feature: bool = True  # fuse g into later features (off: vispec-noglobal)
    mtp_steps: int = 1  # training: one extra pass on the draft's own features (shortcut learning)
    noise_per_length: bool = True  # training: noise width 0.2 * 512 / seq_len, as the reference


class ViSpecProposer(Eagle2Proposer):
    def prefill_pairs(self, prompt, prefill, first_token):
        first = self.embed(torch.tensor([first_token], device=self.device))
        pairs = splice_pairs(self.draft, prefill.hidden, torch.cat([prefill.input_embeds, first]),
                             prompt.image_spans, self.options.adaptor, self.options.global_feature)
        self.global_features, self.fusion_starts = pairs.global_features, pairs.fusion_starts
        return pairs.features, pairs.token_embeds, pairs.positions

    def transform_features(self, features, positions):
        return fuse_global(self.draft, features, positions, self.global_features, self.fusion_starts)


class ViSpecTrainer(EagleTrainer):
    def draft_inputs(self, features):
        pairs = splice_pairs(self.draft, features.hidden, features.input_embeds, features.image_spans,
                             self.options.adaptor, self.options.global_feature)
        self._globals = (pairs.global_features, pairs.fusion_starts)
        return pairs.features, pairs.token_embeds, pairs.positions, pairs.targets

    def transform_features(self, hidden, positions):
        return fuse_global(self.draft, hidden, positions, *self._globals)

    def noise_width(self, features) -> float:
        if not self.options.noise_per_length:
            return self.options.noise
        return self.options.noise * 512 / features.hidden.shape[0]


# The published ViSpec drafts are draft-only state dicts; some exports name the adaptor's
# learned queries differently or prefix keys. Map them onto ours.
KEY_ALIASES = {"imadpt.query": "imadpt.q", "imadpt.queries": "imadpt.q", "imadpt.q.weight": "imadpt.q"}
FULL_MODEL_MARKERS = ("model.layers.", "language_model.", "lm_head.weight", "model.embed_tokens.", "vision_tower.",
                      "visual.", "layers.1.")


def map_published_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    full = sorted({marker for marker in FULL_MODEL_MARKERS for key in state_dict if key.startswith(marker)})
    if full:
        raise DraftCheckpointError(
            "this looks like a full model checkpoint, not a ViSpec draft (found keys starting with "
            f"{', '.join(full)}); pass the draft-only checkpoint (keys fc.*, img_fc.*, imadpt.*, layers.0.*)")
    mapped = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.").removeprefix("draft.")
        mapped[KEY_ALIASES.get(key, key)] = value
    return mapped


class ViSpec(Eagle2):
    name = "vispec"
    Options = ViSpecOptions
    proposer_class = ViSpecProposer
    # Stage 2 starts from an EAGLE-2 draft. The ablations (registry presets of this class) are
    # of the same kind, "vispec", and so load these drafts.
    compatible_checkpoints = ("eagle2",)

    def build_draft(self, adapter, checkpoint=None) -> ViSpecDraft:
        if self.options.num_q < 2:
            raise InputError(f"vispec.num_q must be >= 2 (num_q - 1 compressed tokens + 1 global), "
                             f"got {self.options.num_q}")
        return ViSpecDraft(adapter.text_config, self.options.num_q, published_config(checkpoint))

    def load_checkpoint(self, draft, checkpoint, source: str) -> None:
        state = map_published_keys(checkpoint.state_dict)
        set_token_map(draft, state.get(BUFFER))  # the checkpoint's reduced vocabulary, if any
        if checkpoint.config.get("method") == "eagle2" or not any(k.startswith("imadpt.") for k in state):
            # Stage-2 start from an EAGLE-2 draft: its fc and layer; img_fc stays [I | 0], the adaptor fresh.
            own = draft.state_dict()
            state = {**{k: v for k, v in own.items() if k.startswith(("img_fc.", "imadpt."))}, **state}
        load_matching(draft, state, f"{self.name} checkpoint {source}", ignore_prefixes=self.ignored_checkpoint_keys)

    def make_trainer(self, draft, lm_head):
        return ViSpecTrainer(draft, lm_head, self.options)
