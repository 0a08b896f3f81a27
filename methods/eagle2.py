"""EAGLE-2 (Li et al., 2024): a one-layer feature-level draft with a dynamic draft tree.

Draft (EAGLE-1 section 3): at position i it reads the pair (h_i, e_{i+1}) — the target's last
hidden state h_i (after the final norm, what the lm_head reads) and the input embedding of
the next token — through fc = Linear(2H -> H) over cat(e, h), then one decoder layer of the
target's own family (HF's module; its input norm removed, as in the reference), and predicts
h_{i+1}; the target's frozen lm_head turns that into a distribution over x_{i+2}.

Dynamic tree (EAGLE-2 section 4): the root's top_k children form level 1; each later level
expands the top_k nodes of the previous one by cumulative log-probability (top_k children
each); finally the total_token best nodes of every level are kept (a child's score never
exceeds its parent's, so the set is closed under ancestors). The draft's KV cache holds the
committed pairs across rounds; tree nodes are appended while drafting and cropped after.

Training (EAGLE-1 section 3.3): teacher forcing on target features with uniform noise;
loss = 1.0 * SmoothL1(predicted feature, h_{i+1}) + 0.1 * soft cross-entropy against the
target's distribution at i+1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vispec_bench.drafts.vocab import head_weight, to_vocab, token_map_of
from vispec_bench.drafts import tree_settings
from vispec_bench.plugins.method import DraftMethod
from vispec_bench.drafts.tree_settings import TreeSettings
from vispec_bench.engine.proposer import Proposer
from vispec_bench.engine.draft_tree import DraftTree

# Draft layer families: the target's text model_type -> (module, config class, layer class, rotary class).
DRAFT_FAMILIES = {
    "llama": ("transformers.models.llama.modeling_llama", "LlamaConfig", "LlamaDecoderLayer", "LlamaRotaryEmbedding"),
    "qwen2": ("transformers.models.qwen2.modeling_qwen2", "Qwen2Config", "Qwen2DecoderLayer", "Qwen2RotaryEmbedding"),
}
FAMILY_OF_MODEL_TYPE = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen2_5_vl_text": "qwen2",
                        "qwen2_5_vl": "qwen2"}


def _rope_parameters(text_config) -> dict:
    params = dict(getattr(text_config, "rope_parameters", None) or {})
    theta = params.get("rope_theta", getattr(text_config, "rope_theta", 10000.0))
    if params.get("rope_type", "default") != "default" and "mrope_section" not in params:
        return params  # e.g. llama3 scaling: the draft uses the target's rope
    # Qwen2.5-VL's 3-D mrope collapses to 1-D rope when all three position ids are equal; the
    # draft uses 1-D positions over token indices, as the ViSpec reference does.
    return {"rope_type": "default", "rope_theta": theta}


def draft_layer_config(text_config):
    import importlib

    model_type = getattr(text_config, "model_type", "")
    family = FAMILY_OF_MODEL_TYPE.get(model_type)
    if family is None:
        raise ValueError(f"no EAGLE draft layer for target model_type {model_type!r}; "
                         f"supported: {', '.join(sorted(FAMILY_OF_MODEL_TYPE))}")
    module_name, config_name, layer_name, rotary_name = DRAFT_FAMILIES[family]
    module = importlib.import_module(module_name)
    config_class = getattr(importlib.import_module(f"transformers.models.{family}.configuration_{family}"), config_name)
    config = config_class(
        hidden_size=text_config.hidden_size, intermediate_size=text_config.intermediate_size,
        num_attention_heads=text_config.num_attention_heads,
        num_key_value_heads=getattr(text_config, "num_key_value_heads", text_config.num_attention_heads),
        head_dim=getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads,
        rms_norm_eps=text_config.rms_norm_eps, hidden_act=getattr(text_config, "hidden_act", "silu"),
        max_position_embeddings=text_config.max_position_embeddings, vocab_size=text_config.vocab_size,
        num_hidden_layers=1, rope_parameters=_rope_parameters(text_config),
        attention_bias=getattr(text_config, "attention_bias", family == "qwen2"))
    config._attn_implementation = "sdpa"
    return config, getattr(module, layer_name), getattr(module, rotary_name)


class EagleDraft(nn.Module):
    """fc(cat(e, h)) -> one decoder layer. Parameter names match the published EAGLE layout."""

    def __init__(self, text_config):
        super().__init__()
        config, layer_class, rotary_class = draft_layer_config(text_config)
        hidden = config.hidden_size
        self.config = config
        self.fc = nn.Linear(2 * hidden, hidden, bias=True)
        self.layers = nn.ModuleList([layer_class(config, layer_idx=0)])
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
        out = self.layers[0](x, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache,
                             use_cache=cache is not None,
                             position_embeddings=self.rotary_emb(x, position_ids))
        return out[0] if isinstance(out, tuple) else out  # older transformers return a tuple


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [n, kv] (True = may attend) -> additive float mask [1, 1, n, kv]."""
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)[None, None]


def causal_visible(num_new: int, num_past: int, device) -> torch.Tensor:
    return torch.ones(num_new, num_past + num_new, dtype=torch.bool, device=device).tril(num_past)


@dataclass
class Eagle2Options:
    draft: str = ""  # a checkpoint directory (ours or the EAGLE authors' layout), or "random" (seeded init)
    # Tree (vispec_bench.drafts.tree_settings): 0 = the device's default (cuda 5/8/60, cpu 5/4/10);
    # total_token=-1 sizes the tree from forward costs measured at start-up. Papers: VLM 3/8/30, LLM 5/10/60.
    depth: int = 0  # tree levels
    top_k: int = 0  # children per expanded node and nodes expanded per level
    total_token: int = 0  # draft nodes verified per round, root excluded
    seed: int = 0  # for draft=random
    noise: float = 0.2  # training: uniform feature noise width, (U - 0.5) * noise
    mtp_steps: int = 0  # training: extra passes that feed the draft its own predicted features
    vocab: int = 0  # training: draft vocabulary size (0 = the target's); a checkpoint brings its own map


class Eagle2Proposer(Proposer):
    def __init__(self, draft: EagleDraft, adapter, options: Eagle2Options, draft_head: torch.Tensor,
                 tree: TreeSettings):
        self.draft = draft
        self.tree = tree
        self.embed = adapter.embed_tokens
        self.draft_head = draft_head  # the lm_head rows of the draft vocabulary
        self.token_map = token_map_of(draft)
        self.device, self.dtype = adapter.device, adapter.dtype
        self.options = options

    # --- what ViSpec overrides ------------------------------------------------------------
    def prefill_pairs(self, prompt, prefill, first_token: int):
        """Draft inputs for the prompt: pair i = (h_i, e_{i+1}) at position i; e_S is the first token's."""
        first = self.embed(torch.tensor([first_token], device=self.device))
        return prefill.hidden, torch.cat([prefill.input_embeds[1:], first]), torch.arange(
            prefill.hidden.shape[0], device=self.device)

    def transform_features(self, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Hook on the draft's input features [n, H] at draft positions [n] (ViSpec fuses its global feature)."""
        return features

    # --- the proposer ---------------------------------------------------------------------
    def start(self, adapter, prompt, prefill, first_token):
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.pending = self.prefill_pairs(prompt, prefill, first_token)

    def absorb(self, result):
        tokens = torch.tensor(result.path_tokens[1:] + [result.closing_token], device=self.device)
        positions = self.next_position + torch.arange(tokens.shape[0], device=self.device)
        self.pending = (result.path_hidden, self.embed(tokens), positions)

    def _run(self, features, token_embeds, positions, visible):
        out = self.draft(self.transform_features(features, positions)[None], token_embeds[None], positions[None],
                         additive_mask(visible, self.dtype), self.cache)
        return out[0]  # [n, H]

    def _top(self, hidden, k: int):
        """(log-probabilities, target token ids) of the draft's k best tokens, along the last dim."""
        log_probs = torch.log_softmax(nn.functional.linear(hidden, self.draft_head).float(), dim=-1)
        top = log_probs.topk(k)
        return top.values, to_vocab(top.indices, self.token_map)

    @torch.no_grad()
    def propose(self, emitted, budget):
        features, token_embeds, positions = self.pending
        committed = self.cache.get_seq_length()
        out = self._run(features, token_embeds, positions, causal_visible(len(positions), committed, self.device))
        self.next_position = int(positions[-1]) + 1
        committed = self.cache.get_seq_length()
        max_depth = min(self.tree.depth, budget - 1)
        if max_depth < 1:
            return None
        try:
            return self._grow_tree(out[-1], committed, max_depth)
        finally:
            appended = self.cache.get_seq_length() - committed
            if appended:
                self.cache.crop(-appended)

    def _grow_tree(self, root_feature, committed: int, max_depth: int) -> DraftTree:
        k = self.tree.top_k
        top_values, top_tokens = self._top(root_feature, k)
        tokens, parents, scores = top_tokens.tolist(), [0] * k, top_values.tolist()
        ancestors = [set() for _ in range(k + 1)]  # node ids (>= 1) above each node; the root is committed
        frontier = list(range(1, k + 1))
        frontier_features = root_feature.expand(k, -1)  # a node's input feature = its parent's draft output
        appended: list[int] = []  # node ids in the draft cache after the committed pairs, in order
        for level in range(2, max_depth + 1):
            visible = torch.zeros(len(frontier), committed + len(appended) + len(frontier), dtype=torch.bool)
            visible[:, :committed] = True
            for row, node in enumerate(frontier):
                for col, other in enumerate(appended):
                    visible[row, committed + col] = other in ancestors[node]
                visible[row, committed + len(appended) + row] = True
            frontier_tokens = torch.tensor([tokens[n - 1] for n in frontier], device=self.device)
            positions = torch.full((len(frontier),), self.next_position + level - 2, device=self.device)
            out = self._run(frontier_features, self.embed(frontier_tokens), positions, visible.to(self.device))
            appended += frontier
            top_values, top_tokens = self._top(out, k)  # [f, k]
            cumulative = torch.tensor([scores[n - 1] for n in frontier], device=self.device)[:, None] + top_values
            first_child = len(tokens) + 1
            for row, node in enumerate(frontier):
                for token in top_tokens[row].tolist():
                    tokens.append(token)
                    parents.append(node)
                    ancestors.append(ancestors[node] | {node})
            scores += cumulative.flatten().tolist()
            best = cumulative.flatten().topk(min(k, cumulative.numel())).indices
            frontier = [first_child + int(i) for i in best]
            frontier_features = out[best // k]
        return self._select(tokens, parents, scores, ancestors)

    def _select(self, tokens, parents, scores, ancestors) -> DraftTree:
        order = sorted(range(1, len(tokens) + 1), key=lambda n: -scores[n - 1])
        chosen = set(order[: self.tree.total_token])
        for node in list(chosen):
            chosen |= ancestors[node]  # only on score ties: keeps the tree connected
        kept = sorted(chosen)  # creation order: parents before children
        index = {0: 0, **{node: i for i, node in enumerate(kept, start=1)}}
        return DraftTree(torch.tensor([tokens[n - 1] for n in kept]), [index[parents[n - 1]] for n in kept])


class Eagle2(DraftMethod):
    name = "eagle2"
    Options = Eagle2Options
    draft_class = EagleDraft
    proposer_class = Eagle2Proposer
    ignored_checkpoint_keys = ("embed_tokens.",)  # published drafts may carry a copy

    def build_draft(self, adapter) -> nn.Module:
        return self.draft_class(adapter.text_config)

    def prepare(self, adapter):
        opts = self.options
        if opts.depth < 0 or opts.top_k < 0 or opts.total_token < -1:
            raise ValueError(f"{self.name}: depth and top_k must be >= 1 (0 = device default) and total_token "
                             f">= 1 (0 = device default, -1 = auto); got {opts.depth}, {opts.top_k}, {opts.total_token}")
        self.draft = self.load_draft_network(adapter)
        self.draft_head = head_weight(adapter.lm_head.weight, token_map_of(self.draft))
        self.tree, self.tree_choice = tree_settings.resolve(opts.depth, opts.top_k, opts.total_token, adapter.device,
                                                          measure=lambda: self._measure_costs(adapter))

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
        return self.proposer_class(self.draft, adapter, self.options, self.draft_head, self.tree)

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

