"""EAGLE-2 (Li et al., 2024): a one-layer feature-level draft with a dynamic draft tree.

Draft (EAGLE-1 section 3): at position i it reads the pair (h_i, e_{i+1}) — the target's last
hidden state h_i (after the final norm, what the lm_head reads) and the input embedding of
the next token — through fc = Linear(2H -> H) over cat(e, h), then one decoder layer of the
target's own family (HF's module; its input norm removed, as in the reference), and predicts
h_{i+1}; the target's frozen lm_head turns that into a distribution over x_{i+2}.

Dynamic tree (EAGLE-2 section 4; vispec_bench.drafts.dynamic_tree): the root's top_k children
form level 1; each of the depth further levels expands the top_k nodes of the previous one by
cumulative log-probability (top_k children each); finally the total_token - 1 best nodes of
all levels are kept. depth / top_k / total_token mean what they mean in the reference's
`topK_genrate` (total_token counts the root): "3 / 8 / 30" is 29 draft nodes over up to 4
levels. The draft's KV cache holds the committed pairs across rounds; tree nodes are appended
while drafting and cropped after.

Training (EAGLE-1 section 3.3): teacher forcing on target features with uniform noise;
loss = 1.0 * SmoothL1(predicted feature, h_{i+1}) + 0.1 * soft cross-entropy against the
target's distribution at i+1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vispec_bench.engine.adapter import cache_argument
from vispec_bench.errors import InputError
from vispec_bench.drafts.vocab import head_weight, to_vocab, token_map_of
from vispec_bench.drafts import tree_settings
from vispec_bench.plugins.draft_training import DraftTraining
from vispec_bench.plugins.method import DraftMethod, DraftOptions
from vispec_bench.drafts.tree_settings import TreeSettings
from vispec_bench.engine.engines import drop_last
from vispec_bench.engine.proposer import Proposer, draft_kv_bytes
from vispec_bench.engine.draft_tree import DraftTree
from vispec_bench.drafts.dynamic_tree import DynamicTree
from vispec_bench.drafts.draft_layer import draft_layer_config


def published_config(checkpoint) -> dict | None:
    """A published checkpoint's config.json ({} if it has none), None for our own layout or none."""
    if checkpoint is None or checkpoint.layout != "published":
        return None
    return checkpoint.config.get("published_config") or {}


class EagleDraft(nn.Module):
    """fc(cat(e, h)) -> one decoder layer. Parameter names match the published EAGLE layout.

    `published`: a published draft's config.json, whose layer shapes and `bias` (fc has a bias
    unless `"bias": false`, e.g. the EAGLE-LLaMA3 drafts) the draft takes; None for our own.
    `input_norm`: keep the decoder layer's input RMSNorm on the fc output (EagleVLM); EAGLE removes it."""

    def __init__(self, text_config, published: dict | None = None, input_norm: bool = False):
        super().__init__()
        config, layer_class, rotary_class = draft_layer_config(text_config, published)
        hidden = config.hidden_size
        self.config = config
        self.fc = nn.Linear(2 * hidden, hidden, bias=bool((published or {}).get("bias", True)))
        self.layers = nn.ModuleList([layer_class(config, layer_idx=0)])
        if not input_norm:
            self.layers[0].input_layernorm = nn.Identity()  # EAGLE: the fc output enters attention un-normed
        self.rotary_emb = rotary_class(config=config)
        self.register_buffer("token_map", None)  # reduced draft vocabulary (vispec_bench.drafts.vocab), if fitted

    def fuse(self, features: torch.Tensor, token_embeds: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([token_embeds, features], dim=-1))

    def forward(self, features, token_embeds, position_ids, attention_mask, cache=None):
        """features, token_embeds [B, n, H]; position_ids [B, n]; attention_mask [B, 1, n, kv] additive."""
        return self.run_layer(self.fuse(features, token_embeds), position_ids, attention_mask, cache)

    def run_layer(self, x, position_ids, attention_mask, cache=None):
        """The decoder layer on its inputs x [B, n, H] (ViSpec also feeds compressed image tokens here)."""
        out = self.layers[0](x, attention_mask=attention_mask, position_ids=position_ids, **cache_argument(self.layers[0], cache),
                             use_cache=cache is not None,
                             position_embeddings=self.rotary_emb(x, position_ids))
        return out[0] if isinstance(out, tuple) else out  # older transformers return a tuple


def draft_forward(draft, features, token_embeds, position_ids, attention_mask, cache, **extra):
    """The draft's forward as a plain function: what the compiled engine compiles (one per method)."""
    return draft(features, token_embeds, position_ids, attention_mask, cache, **extra)


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [n, kv] (True = may attend) -> additive float mask [1, 1, n, kv]."""
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)[None, None]


def causal_visible(num_new: int, num_past: int, device) -> torch.Tensor:
    return torch.ones(num_new, num_past + num_new, dtype=torch.bool, device=device).tril(num_past)


def image_pair_count(image_spans, num_pairs: int) -> int:
    """Prompt pairs (h_i, e_{i+1}), i < num_pairs, whose next token is an image token: an image at
    tokens [s, e) is carried by pairs s - 1 ... e - 2 (e - s of them; one fewer when s = 0)."""
    return sum(max(0, min(end - 1, num_pairs) - max(start - 1, 0)) for start, end in image_spans)


@dataclass
class Eagle2Options(DraftOptions):  # draft: ours or the EAGLE authors' layout
    # Tree, in the reference's convention (vispec_bench.drafts.tree_settings): 0 = the device's default
    # (cuda 4/8/61, cpu 4/4/11); total_token=-1 sizes the tree from forward costs measured at start-up.
    # Papers: VLM 3/8/30, LLM 5/10/60.
    depth: int = 0  # levels expanded after the root's children: up to depth + 1 levels of draft tokens
    top_k: int = 0  # children per expanded node and nodes expanded per level
    total_token: int = 0  # verify-input size, root included: total_token - 1 draft nodes per round
    noise: float = 0.2  # training: uniform feature noise width, (U - 0.5) * noise
    mtp_steps: int = 0  # training: extra passes that feed the draft its own predicted features


class Eagle2Proposer(Proposer):
    # The draft network's work outside its module, for the profiling pass's forward timing
    # (instruments.PhaseTimer.instrument): ViSpec's feature fusion, and the vocabulary head + top-k.
    # Every draft-network call goes through these (the draft module only inside `step` and
    # `eager_step`), so the profiling pass times them and leaves the module alone: shadowing its
    # forward would change what the compiled engine's graphs trace, and recompile them.
    draft_forward_methods = ("transform_features", "_top", "step", "eager_step")
    instrument_modules = False
    # The draft's cost (draft_cost), set by prefill_pairs: visual positions its cache holds for the
    # prompt, and how they were compressed (a subclass that compresses names it, e.g. "pool/4").
    draft_visual_tokens: int = 0
    draft_compression: str | None = None

    def __init__(self, draft: EagleDraft, adapter, options: Eagle2Options, draft_head: torch.Tensor,
                 tree: TreeSettings, step=None):
        self.draft = draft
        self.tree = tree
        self.embed = adapter.embed_tokens
        self.draft_head = draft_head  # the lm_head rows of the draft vocabulary
        self.token_map = token_map_of(draft)
        self.device, self.dtype = adapter.device, adapter.dtype
        self.options = options
        self.engine = adapter.engine
        self.step = step or draft_forward  # the draft's forward, compiled on the compiled engine
        self.eager_step = draft_forward  # blocks of other sizes (the prompt's pairs) and ViSpec's extra inputs
        # Token counts of the draft's compiled forwards: a tree level (top_k nodes) and a decode
        # round's accepted path + closing token (up to levels + 1), padded up to one of them.
        self.draft_buckets = sorted({tree.top_k, tree.levels + 1}) if self.engine.compiled else []
        self.max_verify_tokens = tree.draft_nodes + 1  # the engine's verify block (its compile bucket)
        self.cache_slack = max(self.max_verify_tokens, tree.levels * tree.top_k + tree.levels + 1)
        self.prompt_pairs = self.peak_cache_length = 0

    # --- what ViSpec overrides ------------------------------------------------------------
    def prefill_pairs(self, prompt, prefill, first_token: int):
        """Draft inputs for the prompt: pair i = (h_i, e_{i+1}) at position i; e_S is the first token's."""
        self.draft_visual_tokens = image_pair_count(prompt.image_spans, prefill.hidden.shape[0])
        first = self.embed(torch.tensor([first_token], device=self.device))
        return prefill.hidden, torch.cat([prefill.input_embeds[1:], first]), torch.arange(
            prefill.hidden.shape[0], device=self.device)

    def transform_features(self, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Hook on the draft's input features [n, H] at draft positions [n] (ViSpec fuses its global feature)."""
        return features

    # --- the proposer ---------------------------------------------------------------------
    def start(self, adapter, prompt, prefill, first_token):
        self.cache = self.engine.new_cache(self.draft.config, key="draft")
        self.cache_length = 0  # entries in the draft's cache (tracked here: no device read per round)
        self.peak_cache_length = 0  # the most it held, tree nodes included (draft_cost; a host int too)
        self.pending = self.prefill_pairs(prompt, prefill, first_token)
        self.prompt_pairs = self.pending[2].shape[0]
        self.pending_end = int(self.pending[2][-1]) + 1  # the position after the pending pairs

    def absorb(self, result):
        tokens = torch.tensor(result.path_tokens[1:] + [result.closing_token], device=self.device)
        positions = self.next_position + torch.arange(tokens.shape[0], device=self.device)
        self.pending = (result.path_hidden, self.embed(tokens), positions)
        self.pending_end = self.next_position + tokens.shape[0]

    def _run(self, features, token_embeds, positions, visible, **extra):
        """The draft on n pairs appended to its cache (visible: bool [n, cache_length + n]) -> [n, H].

        On the compiled engine a block of a compiled size (a tree level, a decode round) is
        padded to its bucket (padding rows see only themselves and are cropped at once); other
        blocks (the prompt's pairs) and calls with `extra` inputs run the draft eagerly."""
        features = self.transform_features(features, positions)
        num = positions.shape[0]
        padded = next((b for b in self.draft_buckets if b >= num), None) if not extra else None
        if padded is None:
            out = self.eager_step(self.draft, features[None], token_embeds[None], positions[None],
                                  self.engine.mask(visible, self.dtype), self.cache, **extra)[0]
            self._appended(num)
            return out
        pad = padded - num
        if pad:
            width = visible.shape[1]
            grown = torch.zeros(padded, width + pad, dtype=torch.bool, device=visible.device)
            grown[:num, :width] = visible
            grown[num:, width:] = torch.eye(pad, dtype=torch.bool, device=visible.device)
            visible = grown
            features = torch.cat([features, features.new_zeros(pad, features.shape[1])])
            token_embeds = torch.cat([token_embeds, token_embeds.new_zeros(pad, token_embeds.shape[1])])
            positions = torch.cat([positions, positions[-1:].expand(pad)])
        out = self.step(self.draft, features[None], token_embeds[None], positions[None],
                        self.engine.mask(visible, self.dtype), self.cache)[0]
        if pad:
            drop_last(self.cache, pad)
        self._appended(num)
        return out[:num]

    def _appended(self, num: int) -> None:
        """Count `num` entries appended to the draft's cache, and the peak it reached (host ints)."""
        self.cache_length += num
        self.peak_cache_length = max(self.peak_cache_length, self.cache_length)

    def draft_cost(self) -> dict:
        """The draft cache's visual positions for the prompt and its peak size, in entries (compiled
        engine: padding rows, cropped at once, not counted) and bytes of K and V."""
        cost = {"visual_tokens": self.draft_visual_tokens, "kv_tokens": self.peak_cache_length,
                "kv_bytes": draft_kv_bytes(self.peak_cache_length, self.draft.config,
                                           next(self.draft.parameters()).dtype),
                "prompt_pairs": self.prompt_pairs}
        if self.draft_compression:
            cost["compression"] = self.draft_compression
        return cost

    def _top(self, hidden, k: int):
        """(log-probabilities, target token ids) of the draft's k best tokens, along the last dim."""
        log_probs = torch.log_softmax(nn.functional.linear(hidden, self.draft_head).float(), dim=-1)
        top = log_probs.topk(k)
        return top.values, to_vocab(top.indices, self.token_map)

    @torch.no_grad()
    def propose(self, emitted, budget):
        features, token_embeds, positions = self.pending
        committed = self.cache_length
        out = self._run(features, token_embeds, positions, causal_visible(len(positions), committed, self.device))
        self.next_position = self.pending_end
        committed = self.cache_length
        levels = min(self.tree.levels, budget - 1)  # depth + 1 levels (reference convention)
        if levels < 1:
            return None
        try:
            return self._grow_tree(out[-1], committed, levels)
        finally:
            appended = self.cache_length - committed
            if appended:
                drop_last(self.cache, appended)
                self.cache_length = committed

    def _grow_tree(self, root_feature, committed: int, levels: int) -> DraftTree:
        k = self.tree.top_k
        tree = DynamicTree(k)
        frontier = tree.add_root_children(*self._top(root_feature, k))  # node ids [k], on the device
        frontier_features = root_feature.expand(k, -1)  # a node's input feature = its parent's draft output
        appended = frontier[:0]  # node ids in the draft cache after the committed pairs, in order
        for level in range(2, levels + 1):
            # A frontier node sees the committed pairs, its ancestors among the appended nodes, and itself.
            width = len(frontier)
            visible = torch.cat([torch.ones(width, committed, dtype=torch.bool, device=self.device),
                                 tree.sees(frontier, appended).to(self.device),
                                 torch.eye(width, dtype=torch.bool, device=self.device)], dim=1)
            positions = torch.full((width,), self.next_position + level - 2, device=self.device)
            out = self._run(frontier_features, self.embed(tree.tokens[frontier - 1].to(self.device)), positions,
                            visible)
            appended = torch.cat([appended, frontier])
            frontier, rows = tree.add_level(frontier, *self._top(out, k))
            frontier_features = out[rows]
        return tree.select(self.tree.draft_nodes)


class Eagle2(DraftMethod, DraftTraining):
    name = "eagle2"
    Options = Eagle2Options
    draft_class = EagleDraft
    proposer_class = Eagle2Proposer
    ignored_checkpoint_keys = ("embed_tokens.",)  # published drafts may carry a copy

    def build_draft(self, adapter, checkpoint=None) -> nn.Module:
        return self.draft_class(adapter.text_config, published_config(checkpoint))

    def check_published(self, checkpoint, adapter, what: str) -> None:
        from vispec_bench.drafts.checkpoints import check_published

        fc = checkpoint.state_dict.get("fc.weight")  # [H, 2H]
        check_published(checkpoint, adapter, what, hidden_size=None if fc is None else fc.shape[0])

    def prepare(self, adapter):
        opts = self.options
        if opts.depth < 0 or opts.top_k < 0 or opts.total_token < -1:
            raise InputError(f"{self.name}: depth and top_k must be >= 1 (0 = device default) and total_token "
                             f">= 2, counting the root (0 = device default, -1 = auto); "
                             f"got {opts.depth}, {opts.top_k}, {opts.total_token}")
        self.draft = self.load_draft_network(adapter)
        self.draft_head = self.proposal_head(adapter)
        self.tree, self.tree_choice = tree_settings.resolve(opts.depth, opts.top_k, opts.total_token, adapter.device,
                                                          measure=lambda: self._measure_costs(adapter))
        self.draft_step = adapter.engine.compile(draft_forward)

    def proposal_head(self, adapter) -> torch.Tensor:
        """The weight that scores the draft's outputs: the target's lm_head rows of the draft vocabulary
        (EAGLE-3 has its own lm_head)."""
        return head_weight(adapter.lm_head.weight, token_map_of(self.draft))

    def _measure_costs(self, adapter):
        """(target verify costs, seconds per draft level) for total_token=-1."""
        k = self.options.top_k or tree_settings.DEVICE_DEFAULTS[tree_settings.device_kind(adapter.device)].top_k
        x = torch.zeros(1, k, adapter.hidden_size, device=adapter.device, dtype=adapter.dtype)
        positions = torch.arange(k, device=adapter.device)[None]
        mask = additive_mask(causal_visible(k, 0, adapter.device), adapter.dtype)

        def draft_level():
            out = self.draft(x, x, positions, mask)
            nn.functional.linear(out, self.draft_head).float().log_softmax(-1).topk(k)

        with torch.no_grad():
            level = tree_settings.median_seconds(draft_level, adapter.device, repeats=5)
        return tree_settings.verify_costs(adapter), level

    def runtime_settings(self) -> dict:
        return self.tree_choice

    def make_proposer(self, adapter, context):
        return self.proposer_class(self.draft, adapter, self.options, self.draft_head, self.tree, self.draft_step)

    def make_trainer(self, draft: nn.Module, lm_head: nn.Module):
        return EagleTrainer(draft, lm_head, self.options)


class EagleTrainer:
    """Teacher-forced training of an EAGLE-style draft on one sequence at a time."""

    def __init__(self, draft: EagleDraft, lm_head: nn.Module, options: Eagle2Options):
        self.draft = draft
        self.lm_head = lm_head  # the target's, frozen
        self.options = options

    def draft_inputs(self, features):
        """(input features [n, H], token embeds [n, H], positions [n], target positions [n]) for pass 1."""
        n = features.hidden.shape[0] - 1
        positions = torch.arange(n, device=features.hidden.device)
        return features.hidden[:-1], features.input_embeds[1:], positions, positions + 1

    def transform_features(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return hidden

    def noise_width(self, features) -> float:
        return self.options.noise

    def run_draft(self, inputs, embeds, positions, step: int) -> torch.Tensor:
        """One causal pass of the draft over a sequence's pairs: [n, H] -> [n, H]."""
        mask = additive_mask(causal_visible(inputs.shape[0], 0, inputs.device), inputs.dtype)
        return self.draft(self.transform_features(inputs, positions)[None], embeds[None], positions[None], mask)[0]

    def passes(self, features, num_passes: int, noise: float = 0.0):
        """Pass 1 reads target features; pass k > 1 reads the draft's own outputs of pass k - 1.

        Yields (predicted features [n, H], target positions [n]) per pass.
        """
        inputs, embeds, positions, targets = self.draft_inputs(features)
        for step in range(num_passes):
            if step == 0 and noise > 0:
                inputs = inputs + (torch.rand_like(inputs) - 0.5) * noise
            if inputs.shape[0] == 0:
                return
            out = self.run_draft(inputs, embeds, positions, step)
            yield out, targets
            # The next pass: the prediction of h_{t} stands in for h_t, paired with e_{t+1}.
            keep = targets + 1 < features.hidden.shape[0]
            token_positions = targets[keep] + 1
            inputs, embeds = out[keep], features.input_embeds[token_positions]
            positions, targets = positions[keep] + 1, targets[keep] + 1

    def loss(self, features) -> tuple[torch.Tensor, dict]:
        total, logs = 0.0, {}
        for step, (predicted, targets) in enumerate(self.passes(features, 1 + self.options.mtp_steps,
                                                                self.noise_width(features))):
            weight = features.loss_mask[targets].float()
            if weight.sum() == 0:
                continue
            target_hidden = features.hidden[targets]
            regression = nn.functional.smooth_l1_loss(predicted.float(), target_hidden.float(), reduction="none").mean(-1)
            weight_rows = head_weight(self.lm_head.weight, token_map_of(self.draft))
            with torch.no_grad():  # over a reduced vocabulary: the target's distribution renormalised on it (EAGLE-3)
                target_probs = torch.softmax(nn.functional.linear(target_hidden, weight_rows).float(), dim=-1)
            draft_log_probs = torch.log_softmax(nn.functional.linear(predicted, weight_rows).float(), dim=-1)
            soft_ce = -(target_probs * draft_log_probs).sum(-1)
            step_loss = ((1.0 * regression + 0.1 * soft_ce) * weight).sum() / weight.sum()
            total = total + step_loss
            logs[f"loss_depth{step + 1}"] = float(step_loss.detach())
        return total, logs

    @torch.no_grad()
    def accuracy(self, features, max_depth: int = 3) -> dict[str, tuple[int, int]]:
        """Top-1 agreement with the target's argmax at draft depth 1..max_depth (teacher-forced start)."""
        result = {}
        for step, (predicted, targets) in enumerate(self.passes(features, max_depth)):
            mask = features.loss_mask[targets]
            token_map = token_map_of(self.draft)
            draft_top = to_vocab(nn.functional.linear(predicted[mask], head_weight(self.lm_head.weight, token_map))
                                 .argmax(-1), token_map)
            target_top = self.lm_head(features.hidden[targets][mask]).argmax(-1)
            result[f"depth{step + 1}"] = (int((draft_top == target_top).sum()), int(mask.sum()))
        return result

