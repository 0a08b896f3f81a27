"""ViSpec (Kang et al., NeurIPS 2025): the EAGLE-2 draft made vision-aware.

It reuses EAGLE-2's draft, tree and training recipe (methods/eagle2.py) and computes the
function of the authors' draft (KangJialiang/ViSpec, `vispec/model/cnets_ours.py`):

(a) a vision adaptor (`imadpt`): num_q learned queries `q` [num_q, heads, head_dim] attend,
    per head and with no query projection, over one image's embeddings (the target's decoder
    inputs at that image's positions): softmax(q k^T / sqrt(head_dim)) v with k, v = k_proj,
    v_proj of the embeddings (biases only when the draft layer has q/k/v biases, i.e. on Qwen
    targets), then o_proj without bias; no norm, no positional encoding. Of the num_q outputs,
    the first num_q - 1 are compressed image tokens; the last is the image's global feature g.
(b) the splice: in the draft's input, the pairs that carry an image's tokens are replaced by
    the num_q - 1 compressed tokens, placed at that image's trailing positions; text after the
    image keeps its original positions, so the draft's positions have a gap where the image was
    (the draft's cache is shorter than the target's). With EAGLE's pairing — the pair at draft
    position i holds (h_i, e_{i+1}) — an image occupying token positions [s, e) keeps its
    compressed tokens at pair positions e - num_q ... e - 2, and pair positions s - 1 ...
    e - num_q - 1 disappear. The compressed tokens enter the decoder layer directly: they do
    not pass through fc, and no target feature goes with them.
(c) the global feature: every feature entering the draft (prompt pairs, tree nodes, decode
    rounds) is fused as img_fc(cat(h, g)) before fc, with g = 0 before the first image and on
    text-only prompts. img_fc = Linear(2H -> H) starts as [I | 0] with zero bias, so an EAGLE-2
    draft loaded into ViSpec is unchanged.

Generalisation beyond the reference (which reuses the first image's segment sizes and crashes
on a second image): any number of images; each image is compressed on its own, and a feature
at pair position p is fused with the g of the latest image whose pairs end before p (pair
positions >= e - 1 of that image), g = 0 before the first. With one image, or none, this is
exactly the reference's function. The reference also skips the first image token's embedding
in the adaptor when an image starts at token 0; here the adaptor reads the whole image.

Ablations are registry entries of this class with an option preset: `vispec-noadaptor`
(adaptor=false: no splice, image tokens enter as in EAGLE-2; global feature on) and
`vispec-noglobal` (global_feature=false: splice on, g = 0 everywhere: img_fc still applies, with
its g input zeroed).

Training (ViSpec section 3.3): stage 1 is EAGLE-2 training on text (`train --method eagle2`);
stage 2 (`train --method vispec --init EAGLE2_CKPT`) trains on multimodal conversations whose
answers the target generated from long-answer prompts (`gen-data --prompt-suffix`). Against
shortcut learning from the target's features: uniform noise (U - 0.5) * 0.2 * 512 / seq_len on
the input features, and `mtp_steps` extra passes that feed the draft its own predicted features
(the first pass holds the compressed tokens; later passes shift the draft's outputs along as
EAGLE-2's trainer does, instead of re-running the splice as the reference's script does).

Published drafts (the authors' five on the hub, JLKang/ViSpec-*): `vispec.draft=DIR` or the hub
id, when it is in the local HF cache; the draft layer is built from the checkpoint's
config.json and the keys load as they are (vispec_bench/drafts/published.py).

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
from methods.eagle2 import (Eagle2, Eagle2Options, Eagle2Proposer, EagleDraft, EagleTrainer, additive_mask,
                            causal_visible, image_pair_count, published_config)


class VisionAdaptor(nn.Module):
    """num_q learned per-head queries cross-attending over one image's embeddings (the reference's layout)."""

    def __init__(self, hidden: int, num_heads: int, num_q: int, kv_bias: bool):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {num_heads} heads")
        head_dim = hidden // num_heads
        self.q = nn.Parameter(torch.randn(num_q, num_heads, head_dim) * head_dim ** -0.5)
        self.k_proj = nn.Linear(hidden, hidden, bias=kv_bias)
        self.v_proj = nn.Linear(hidden, hidden, bias=kv_bias)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """image_embeds [n, H] -> [num_q, H]."""
        num_q, heads, head_dim = self.q.shape
        q = self.q.to(image_embeds.dtype).transpose(0, 1)  # [heads, num_q, d]: used as they are, no projection
        k = self.k_proj(image_embeds).view(-1, heads, head_dim).transpose(0, 1)  # [heads, n, d]
        v = self.v_proj(image_embeds).view(-1, heads, head_dim).transpose(0, 1)
        attended = nn.functional.scaled_dot_product_attention(q[None], k[None], v[None])[0]  # scale 1/sqrt(d)
        return self.o_proj(attended.transpose(0, 1).reshape(num_q, heads * head_dim))


class DirectInputDraft(EagleDraft):
    """An EAGLE draft whose input rows may be compressed image tokens that enter the decoder layer
    as they are (ViSpec's adaptor outputs, SpecVLM's compressor outputs)."""

    def forward(self, features, token_embeds, position_ids, attention_mask, cache=None, direct=None):
        """As EAGLE's, except rows where `direct` [B, n] is True: their token_embeds row (a compressed
        image token) is the layer's input as it is, with no fc and no target feature."""
        x = self.fuse(features, token_embeds)
        if direct is not None:
            x = torch.where(direct[..., None], token_embeds.to(x.dtype), x)
        return self.run_layer(x, position_ids, attention_mask, cache)


class ViSpecDraft(DirectInputDraft):
    def __init__(self, text_config, num_q: int, published: dict | None = None):
        super().__init__(text_config, published)  # a published config.json's shapes and fc bias
        hidden = self.config.hidden_size
        fc_bias = self.fc.bias is not None  # "bias": false removes fc's and img_fc's biases, as the reference
        self.img_fc = nn.Linear(2 * hidden, hidden, bias=fc_bias)
        with torch.no_grad():  # [I | 0]: fusion starts as the identity on h
            self.img_fc.weight.zero_()
            self.img_fc.weight[:, :hidden].copy_(torch.eye(hidden))
            if fc_bias:
                self.img_fc.bias.zero_()
        # The adaptor's k/v carry biases exactly when the draft layer's q/k/v do (Qwen targets).
        kv_bias = self.layers[0].self_attn.k_proj.bias is not None
        self.imadpt = VisionAdaptor(hidden, self.config.num_attention_heads, num_q, kv_bias)


@dataclass
class SplicedPairs:
    features: torch.Tensor  # [m, H] target features of the kept pairs (unused at compressed rows)
    token_embeds: torch.Tensor  # [m, H] next-token embeddings; the compressed tokens at compressed rows
    direct: torch.Tensor  # [m] bool: compressed rows, which enter the decoder layer directly
    positions: torch.Tensor  # [m] draft positions (original indices, with gaps)
    targets: torch.Tensor  # [m] index of the feature each pair predicts (position + 1)
    global_features: torch.Tensor | None  # [K, H] g of each image; None = g is 0 everywhere
    fusion_starts: torch.Tensor  # [K] first pair position fused with each image's g (image end - 1)
    num_direct: int = 0  # compressed rows (direct.sum(), counted on the host: no device read)
    compressed_index: torch.Tensor | None = None  # [m] row of cat(compressed) at compressed rows, -1 elsewhere


def splice_compressed(hidden: torch.Tensor, input_embeds: torch.Tensor, image_spans: list[tuple[int, int]],
                      compressed: list[torch.Tensor] | None) -> SplicedPairs:
    """EAGLE pairs (h_i, e_{i+1}) at positions i for i < len(hidden), with each image's pairs
    replaced by its compressed tokens `compressed[k]` [m_k, H] (any m_k >= 1 per image, at most
    the image's token count), placed at the image's trailing pair positions e - 1 - m_k ... e - 2;
    None = no splice (every pair kept, as in EAGLE-2). No global feature (global_features None).

    `input_embeds` has one more row than `hidden` when the caller appends the first generated
    token's embedding (decoding), or the same number (training on a full sequence: the last
    feature has no next token and forms no pair). An image at token 0 has one pair slot fewer
    than tokens; if its m_k fills them all, its first compressed tokens are dropped.
    """
    num_pairs = min(hidden.shape[0], input_embeds.shape[0] - 1)
    device = hidden.device
    positions = torch.arange(num_pairs, device=device)
    features, token_embeds = hidden[:num_pairs], input_embeds[1:num_pairs + 1].clone()
    keep = torch.ones(num_pairs, dtype=torch.bool, device=device)
    direct = torch.zeros(num_pairs, dtype=torch.bool, device=device)
    index = torch.full((num_pairs,), -1, dtype=torch.long, device=device)
    num_direct = 0
    if compressed is not None:
        offset = 0
        for (start, end), tokens in zip(image_spans, compressed, strict=True):
            count = tokens.shape[0]
            if not 1 <= count <= end - start:
                raise ValueError(f"an image of {end - start} tokens cannot hold {count} compressed tokens")
            compressed_from = max(end - 1 - count, 0)
            keep[max(start - 1, 0):compressed_from] = False  # pairs whose token is an image token
            token_embeds[compressed_from:end - 1] = tokens[count - (end - 1 - compressed_from):].to(token_embeds.dtype)
            direct[compressed_from:end - 1] = True
            num_direct += end - 1 - compressed_from
            index[compressed_from:end - 1] = torch.arange(offset + count - (end - 1 - compressed_from), offset + count,
                                                          device=device)
            offset += count
    fusion_starts = torch.tensor([end - 1 for _, end in image_spans], device=device, dtype=torch.long)
    return SplicedPairs(features[keep], token_embeds[keep], direct[keep], positions[keep], positions[keep] + 1,
                        None, fusion_starts, num_direct, index[keep])


def splice_pairs(draft: ViSpecDraft, hidden: torch.Tensor, input_embeds: torch.Tensor,
                 image_spans: list[tuple[int, int]], use_adaptor: bool, use_global: bool) -> SplicedPairs:
    """EAGLE pairs (h_i, e_{i+1}) at positions i for i < len(hidden), with ViSpec's splice: each
    image's num_q - 1 compressed tokens (splice_compressed) and its global feature g.
    `input_embeds`: as splice_compressed's.
    """
    num_compressed = draft.imadpt.q.shape[0] - 1
    outputs = [draft.imadpt(input_embeds[start:end]) for start, end in image_spans]
    compressed = [out[:num_compressed] for out in outputs] if use_adaptor else None
    pairs = splice_compressed(hidden, input_embeds, image_spans, compressed)
    pairs.global_features = torch.stack([out[-1] for out in outputs]) if (use_global and outputs) else None
    return pairs


def fuse_global(draft: ViSpecDraft, features: torch.Tensor, positions: torch.Tensor,
                global_features: torch.Tensor | None, fusion_starts: torch.Tensor) -> torch.Tensor:
    """img_fc(cat(h, g)) for every feature: g of the latest image whose fusion has started, else 0."""
    g = torch.zeros_like(features)
    if global_features is not None:
        image_index = torch.searchsorted(fusion_starts, positions, right=True) - 1  # [n], -1 = before any image
        latest = global_features[image_index.clamp(min=0)].to(features.dtype)
        g = torch.where((image_index >= 0)[:, None], latest, g)
    return draft.img_fc(torch.cat([features, g], -1))


@dataclass
class ViSpecOptions(Eagle2Options):
    num_q: int = 2  # adaptor queries: num_q - 1 compressed tokens per image + 1 global feature
    adaptor: bool = True  # splice compressed tokens in place of the image (off: vispec-noadaptor)
    global_feature: bool = True  # fuse g into the features (off: vispec-noglobal, g = 0 everywhere)
    mtp_steps: int = 1  # training: one extra pass on the draft's own features (shortcut learning)
    noise_per_length: bool = True  # training: noise width 0.2 * 512 / seq_len, as the reference


class SplicedProposer(Eagle2Proposer):
    """A proposer whose prompt pairs may hold compressed image tokens (`prompt_direct`, set by its
    prefill_pairs; None = none): only the prompt's pairs do, tree nodes and decode rounds are plain pairs."""

    prompt_features = prompt_direct = None

    def _run(self, features, token_embeds, positions, visible, **extra):
        if features is self.prompt_features and self.prompt_direct is not None:
            extra = {**extra, "direct": self.prompt_direct[None]}
        return super()._run(features, token_embeds, positions, visible, **extra)

    def absorb(self, result):
        self.prompt_features = self.prompt_direct = None
        super().absorb(result)


class ViSpecProposer(SplicedProposer):
    def prefill_pairs(self, prompt, prefill, first_token):
        first = self.embed(torch.tensor([first_token], device=self.device))
        pairs = splice_pairs(self.draft, prefill.hidden, torch.cat([prefill.input_embeds, first]),
                             prompt.image_spans, self.options.adaptor, self.options.global_feature)
        self.global_features, self.fusion_starts = pairs.global_features, pairs.fusion_starts
        self.prompt_features, self.prompt_direct = pairs.features, pairs.direct
        if self.options.adaptor:  # the draft's cache holds num_q - 1 compressed tokens per image
            self.draft_visual_tokens = pairs.num_direct
            self.draft_compression = f"adaptor:{self.options.num_q - 1}/image"
        else:  # vispec-noadaptor: the image's pairs, as EAGLE-2
            self.draft_visual_tokens = image_pair_count(prompt.image_spans, prefill.hidden.shape[0])
        return pairs.features, pairs.token_embeds, pairs.positions

    def transform_features(self, features, positions):
        return fuse_global(self.draft, features, positions, self.global_features, self.fusion_starts)


class SplicedTrainer(EagleTrainer):
    """Training on spliced pairs: draft_inputs sets `_direct` (the compressed rows of the first
    pass; None = none) and may set `_key_bias` [n] (added to every query's attention logits on those rows'
    keys in the first pass; None = none)."""

    _direct = _key_bias = None

    def run_draft(self, inputs, embeds, positions, step: int) -> torch.Tensor:
        mask = additive_mask(causal_visible(inputs.shape[0], 0, inputs.device), inputs.dtype)
        direct = None
        if step == 0 and self._direct is not None:  # later passes read the draft's own features: plain pairs
            direct = self._direct[None]
            if self._key_bias is not None:
                mask = mask + self._key_bias.to(mask.dtype)
        return self.draft(self.transform_features(inputs, positions)[None], embeds[None], positions[None], mask,
                          direct=direct)[0]


class ViSpecTrainer(SplicedTrainer):
    def draft_inputs(self, features):
        pairs = splice_pairs(self.draft, features.hidden, features.input_embeds, features.image_spans,
                             self.options.adaptor, self.options.global_feature)
        self._globals, self._direct = (pairs.global_features, pairs.fusion_starts), pairs.direct
        return pairs.features, pairs.token_embeds, pairs.positions, pairs.targets

    def transform_features(self, hidden, positions):
        return fuse_global(self.draft, hidden, positions, *self._globals)

    def noise_width(self, features) -> float:
        if not self.options.noise_per_length:
            return self.options.noise
        return self.options.noise * 512 / features.hidden.shape[0]


# The adaptor's earlier parameterisation here (a query projection; 2-D q): trained under another function.
EARLIER_ADAPTOR_KEYS = ("imadpt.q_proj.weight", "imadpt.q_proj.bias")


def check_draft_keys(state_dict: dict[str, torch.Tensor], source: str) -> None:
    if any(key in state_dict for key in EARLIER_ADAPTOR_KEYS):
        raise DraftCheckpointError(
            f"ViSpec draft {source} was trained with this package's earlier ViSpec function (an adaptor with a "
            "query projection, compressed tokens through fc, no fusion before the first image); it cannot be "
            "converted exactly to the reference's function: retrain it (`python -m vispec_bench train "
            "--method vispec --init EAGLE2_DRAFT ...`)")


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

    def check_published(self, checkpoint, adapter, what: str) -> None:
        """The authors' layout: a config.json is required (the draft layer is built from it), and
        the adaptor's query count must be num_q."""
        if not checkpoint.config.get("published_config"):
            raise DraftCheckpointError(
                f"{what} has draft weights but no config.json: the authors' drafts ship one (hidden_size, "
                "num_attention_heads, num_key_value_heads, intermediate_size, vocab_size, ...), and the draft "
                "layer is built from it")
        super().check_published(checkpoint, adapter, what)
        queries = checkpoint.state_dict.get("imadpt.q")
        if queries is not None and queries.shape[0] != self.options.num_q:
            raise DraftCheckpointError(f"{what} has {queries.shape[0]} adaptor queries: pass "
                                       f"--method-args {self.name}.num_q={queries.shape[0]} (got {self.options.num_q})")

    def load_checkpoint(self, draft, checkpoint, source: str) -> None:
        state = dict(checkpoint.state_dict)
        check_draft_keys(state, source)
        set_token_map(draft, state.get(BUFFER))  # the checkpoint's reduced vocabulary, if any
        if checkpoint.config.get("method") == "eagle2" or not any(k.startswith("imadpt.") for k in state):
            # Stage-2 start from an EAGLE-2 draft: its fc and layer; img_fc stays [I | 0], the adaptor fresh.
            own = draft.state_dict()
            state = {**{k: v for k, v in own.items() if k.startswith(("img_fc.", "imadpt."))}, **state}
        # embed_tokens: the published drafts carry a copy of the target's; the target's own is used.
        load_matching(draft, state, f"{self.name} checkpoint {source}", ignore_prefixes=self.ignored_checkpoint_keys)

    def make_trainer(self, draft, lm_head):
        return ViSpecTrainer(draft, lm_head, self.options)
