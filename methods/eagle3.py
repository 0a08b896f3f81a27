"""EAGLE-3 (Li et al., 2025, "Scaling up Inference Acceleration of LLMs via Training-Time Test").

Draft (paper section 3; the authors' eagle/model/cnets.py): the target's hidden states at the
inputs of three decoder layers — low, middle, high; by default the reference's layers 2,
L // 2 and L - 3 of an L-layer target (the tiny test models, L < 7, take 0, L // 2, L - 1) —
are concatenated and fused by fc = Linear(3H -> H, no bias). One decoder layer ("midlayer")
reads, at position i, a = fc(f_i) (or, deeper in the tree, its own previous output) and the
embedding e_{i+1} of the next token:

    x   = cat(input_layernorm(e_{i+1}), hidden_norm(a))        # [2H]: q/k/v project from 2H
    y   = a + o_proj(attention(x))                              # residual on the un-normed a
    out = y + mlp(post_attention_layernorm(y))                  # the draft's hidden state
    draft logits = lm_head(norm(out))                           # over the reduced draft vocabulary

Its own lm_head scores a reduced vocabulary of draft_vocab_size tokens; draft id d is target id
d + d2t[d], and t2d (bool over the target's vocabulary) marks the tokens the draft has. Names
match the reference checkpoints (fc.weight, midlayer.self_attn.{q,k,v,o}_proj.weight,
midlayer.mlp.*, midlayer.{hidden_norm,input_layernorm,post_attention_layernorm}.weight,
norm.weight, lm_head.weight, d2t, t2d); their frozen embed_tokens copy is not used (the
target's embeddings are). Attention, MLP, norms and rope are HF's modules of the target's text
family; the layer is bias-free for every family, as the reference's (a Llama layer) is.

Dynamic tree (methods/eagle2.py, vispec_bench/drafts/dynamic_tree.py): as EAGLE-2's; at the
root the draft reads fc(features) of the committed tokens, deeper levels feed back the draft's
own output `out` (before `norm`), as the reference's topK_genrate does. Verification is the
target's, so decoding is lossless whatever the draft proposes.

On VLM targets the draft sees every prompt position, image positions included, as the EAGLE-2
draft here does: at an image position its feature is the target's (the three layer inputs
there) and its "token embedding" is what the target's decoder received at that position, the
projector's image embedding (an image placeholder id has no useful embedding of its own); vLLM's
EAGLE proposer does the same for multimodal targets (it embeds the draft's input ids with the
target's multimodal embeddings merged in). The draft positions are the cache indices 0..S-1
(1-D rope, also on Qwen2.5-VL targets, as this package's EAGLE-2 and ViSpec drafts).

Training (training-time test; methods/eagle3_training.py): see there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.eagle2 import Eagle2, Eagle2Options, Eagle2Proposer, published_config
from vispec_bench.drafts.draft_layer import draft_layer_config
from vispec_bench.engine.adapter import cache_argument
from vispec_bench.errors import InputError

REFERENCE_DRAFT_VOCAB = 32000  # the reference's draft_vocab_size (eagle/traineagle3/config.json)


def reference_layer_ids(num_layers: int) -> tuple[int, int, int]:
    """The decoder layers whose inputs EAGLE-3 fuses: (2, L // 2, L - 3), the reference's choice
    (and vLLM's default); a target too shallow for three distinct ones takes (0, L // 2, L - 1)."""
    low, middle, high = 2, num_layers // 2, num_layers - 3
    if low < middle < high:
        return low, middle, high
    return 0, num_layers // 2, num_layers - 1


def parse_layer_ids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise InputError(f"eagle3.layers: expected comma-separated decoder-layer indices such as '2,15,27', "
                         f"got {text!r}") from None


class Eagle3Layer(nn.Module):
    """The midlayer: HF's attention (q/k/v widened to 2H), MLP and norms of the target's family."""

    def __init__(self, config, layer_class, norm_before_residual: bool = False):
        super().__init__()
        # speculators' option: the residual is hidden_norm(a) instead of a (the reference: a)
        self.norm_before_residual = norm_before_residual
        hidden, head_dim = config.hidden_size, config.head_dim
        layer = layer_class(config, layer_idx=0)
        self.self_attn, self.mlp = layer.self_attn, layer.mlp
        self.input_layernorm, self.post_attention_layernorm = layer.input_layernorm, layer.post_attention_layernorm
        self.hidden_norm = type(layer.input_layernorm)(hidden, eps=config.rms_norm_eps)
        attention = self.self_attn
        attention.q_proj = nn.Linear(2 * hidden, config.num_attention_heads * head_dim, bias=False)
        attention.k_proj = nn.Linear(2 * hidden, config.num_key_value_heads * head_dim, bias=False)
        attention.v_proj = nn.Linear(2 * hidden, config.num_key_value_heads * head_dim, bias=False)
        attention.o_proj = nn.Linear(config.num_attention_heads * head_dim, hidden, bias=False)

    def forward(self, token_embeds, hidden, position_embeddings, attention_mask, cache=None):
        """token_embeds, hidden [B, n, H] -> the layer's output [B, n, H]."""
        normed = self.hidden_norm(hidden)
        x = torch.cat([self.input_layernorm(token_embeds), normed], dim=-1)  # [B, n, 2H]
        attended = self.self_attn(hidden_states=x, position_embeddings=position_embeddings,
                                  attention_mask=attention_mask, **cache_argument(self.self_attn, cache))[0]
        hidden = (normed if self.norm_before_residual else hidden) + attended
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class Eagle3Draft(nn.Module):
    """fc(cat of three target layer inputs) -> midlayer -> norm -> lm_head over the draft vocabulary.

    `layer_ids`: the target decoder layers whose inputs are fused (not in the state dict: the
    method finds them in the checkpoint's config or its options). `draft_vocab_size`: rows of
    lm_head. `published`: a published draft's config.json (layer shapes, target_hidden_size).
    `fc_bias`, `norm_before_residual`: what the speculators format may set (the reference: off)."""

    def __init__(self, text_config, layer_ids: tuple[int, ...], draft_vocab_size: int,
                 published: dict | None = None, fc_bias: bool = False, norm_before_residual: bool = False):
        super().__init__()
        config, layer_class, rotary_class = draft_layer_config(text_config, published)
        config.attention_bias = False
        hidden = config.hidden_size
        target_hidden = int((published or {}).get("target_hidden_size") or text_config.hidden_size)
        vocab_size = text_config.vocab_size
        if not 0 < draft_vocab_size <= vocab_size:
            raise InputError(f"eagle3: draft_vocab_size must be in 1..{vocab_size} (the target's vocabulary), "
                             f"got {draft_vocab_size}")
        self.config = config
        self.layer_ids = tuple(layer_ids)
        self.fc = nn.Linear(len(self.layer_ids) * target_hidden, hidden, bias=fc_bias)
        self.midlayer = Eagle3Layer(config, layer_class, norm_before_residual)
        self.norm = type(self.midlayer.input_layernorm)(hidden, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, draft_vocab_size, bias=False)
        self.rotary_emb = rotary_class(config=config)
        # The reference's maps, filled by fit_to_data or a checkpoint; until then the first
        # draft_vocab_size target ids (d2t = 0).
        t2d = torch.zeros(vocab_size, dtype=torch.bool)
        t2d[:draft_vocab_size] = True
        self.register_buffer("d2t", torch.zeros(draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", t2d)

    @property
    def draft_vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    def target_ids(self) -> torch.Tensor:
        """[draft_vocab_size] target token id of each draft id (d + d2t[d])."""
        return torch.arange(self.d2t.shape[0], device=self.d2t.device) + self.d2t

    def set_vocabulary(self, target_ids: torch.Tensor) -> None:
        """d2t / t2d from the draft vocabulary's target ids (ascending, draft_vocab_size of them)."""
        target_ids = torch.as_tensor(target_ids, dtype=torch.long, device=self.d2t.device)
        if target_ids.shape != self.d2t.shape or bool((target_ids[1:] <= target_ids[:-1]).any()):
            raise InputError(f"eagle3: expected {self.d2t.shape[0]} ascending distinct target ids for the draft "
                             f"vocabulary, got {target_ids.shape[0]}")
        self.d2t.copy_(target_ids - torch.arange(target_ids.shape[0], device=target_ids.device))
        self.t2d.zero_()
        self.t2d[target_ids] = True

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """Target features [.., k * H_target] -> [.., H]; the draft's own outputs ([.., H]) pass as they
        are (the reference's `if hidden_states.shape[-1] != inputs_embeds.shape[-1]: fc`)."""
        return features if features.shape[-1] == self.config.hidden_size else self.fc(features)

    def forward(self, features, token_embeds, position_ids, attention_mask, cache=None):
        """features [B, n, 3H] (target) or [B, n, H] (own outputs); token_embeds [B, n, H];
        position_ids [B, n]; attention_mask [B, 1, n, kv] additive -> the draft's hidden [B, n, H]."""
        hidden = self.fuse(features)
        return self.midlayer(token_embeds.to(hidden.dtype), hidden, self.rotary_emb(hidden, position_ids),
                             attention_mask, cache)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits of the draft's hidden states."""
        return self.lm_head(self.norm(hidden))


@dataclass
class Eagle3Options(Eagle2Options):  # depth / top_k / total_token: EAGLE-2's tree; noise / mtp_steps unused
    layers: str = ""  # target decoder layers whose inputs are fused, e.g. "2,15,27"; "" = the checkpoint's or the reference's
    draft_vocab_size: int = 0  # draft lm_head rows (training); 0 = min(target vocabulary, 32000); a checkpoint brings its own
    ttt_steps: int = 7  # training-time test: unrolled draft steps per position (the reference's `length`)


class Eagle3Proposer(Eagle2Proposer):
    """EAGLE-2's proposer with the draft reading the target's captured layer features
    (adapter.layer_features) where EAGLE-2 reads its last hidden states, and scoring with its own
    norm + lm_head over the draft vocabulary (draft ids mapped to target ids through d2t)."""

    def __init__(self, draft: Eagle3Draft, adapter, options, draft_head, tree, step=None):
        super().__init__(draft, adapter, options, draft_head, tree, step)
        self.adapter = adapter
        self.target_layers = draft.layer_ids  # the decode loop has the adapter capture their inputs
        self.token_map = draft.target_ids()  # draft id -> target id, for to_vocab in _top
        self.norm = draft.norm

    def prefill_pairs(self, prompt, prefill, first_token: int):
        _, token_embeds, positions = super().prefill_pairs(prompt, prefill, first_token)
        return self._layer_features(), token_embeds, positions  # pair i = (f_i, e_{i+1})

    def absorb(self, result):
        super().absorb(result)
        _, token_embeds, positions = self.pending
        self.pending = (self._layer_features()[result.path], token_embeds, positions)

    def _layer_features(self) -> torch.Tensor:
        features = self.adapter.layer_features
        if features is None:
            raise RuntimeError("eagle3: the target adapter captured no layer features; decode() asks for the "
                               "proposer's target_layers (adapter.capture_layers) before the prefill")
        return features

    def _top(self, hidden, k: int):
        log_probs = torch.log_softmax(nn.functional.linear(self.norm(hidden), self.draft_head).float(), dim=-1)
        top = log_probs.topk(k)
        return top.values, self.token_map[top.indices]


class Eagle3(Eagle2):
    name = "eagle3"
    Options = Eagle3Options
    draft_class = Eagle3Draft
    proposer_class = Eagle3Proposer

    def layer_ids(self, adapter, checkpoint=None) -> tuple[int, ...]:
        """The option, else what the checkpoint says (ours: draft_config.json `layer_ids`; speculators:
        `eagle_aux_hidden_state_layer_ids`), else the reference's choice for the target's depth."""
        if self.options.layers:
            return parse_layer_ids(self.options.layers)
        config = {} if checkpoint is None else checkpoint.config
        published = published_config(checkpoint) or {}
        found = config.get("layer_ids") or published.get("eagle_aux_hidden_state_layer_ids")
        return tuple(found) if found else reference_layer_ids(adapter.text_config.num_hidden_layers)

    def draft_vocab_size(self, adapter, checkpoint=None) -> int:
        if checkpoint is not None and "lm_head.weight" in checkpoint.state_dict:
            return checkpoint.state_dict["lm_head.weight"].shape[0]
        return self.options.draft_vocab_size or min(adapter.vocab_size, REFERENCE_DRAFT_VOCAB)

    def build_draft(self, adapter, checkpoint=None) -> nn.Module:
        published = published_config(checkpoint)
        return self.draft_class(adapter.text_config, self.layer_ids(adapter, checkpoint),
                                self.draft_vocab_size(adapter, checkpoint), published,
                                norm_before_residual=bool((published or {}).get("norm_before_residual")))

    def load_checkpoint(self, draft, checkpoint, source: str) -> None:
        from vispec_bench.drafts.checkpoints import load_matching

        state = dict(checkpoint.state_dict)
        if "d2t" not in state and "t2d" not in state and draft.draft_vocab_size == draft.t2d.shape[0]:
            # the reference drops both maps when the draft keeps the whole vocabulary (ea_model.py)
            state["d2t"], state["t2d"] = torch.zeros_like(draft.d2t), torch.ones_like(draft.t2d)
        load_matching(draft, state, f"{self.name} checkpoint {source}", ignore_prefixes=self.ignored_checkpoint_keys)
        draft.vocabulary_from_checkpoint = True

    def proposal_head(self, adapter) -> torch.Tensor:
        return self.draft.lm_head.weight

    # --- training (methods/eagle3_training.py) ----------------------------------------------
    def prepare_teacher(self, adapter, draft) -> None:
        adapter.capture_layers(draft.layer_ids)

    def fit_to_data(self, draft, answer_rows, adapter) -> None:
        from methods.eagle3_training import fit_vocabulary

        if self.options.vocab:
            raise InputError("eagle3 sizes its draft vocabulary with eagle3.draft_vocab_size, not eagle3.vocab")
        if not getattr(draft, "vocabulary_from_checkpoint", False):  # --init brings its own maps
            fit_vocabulary(draft, answer_rows, adapter.eos_token_ids)

    def checkpoint_config(self, adapter) -> dict:
        config = super().checkpoint_config(adapter)
        config["layer_ids"] = list(self.layer_ids(adapter))
        return config

    def make_trainer(self, draft: nn.Module, lm_head: nn.Module):
        from methods.eagle3_training import Eagle3Trainer

        return Eagle3Trainer(draft, lm_head, self.options)
