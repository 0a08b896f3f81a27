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
projector's image embedding (an image placeholder id has no useful embedding of its own). The
draft positions are the cache indices 0..S-1 (1-D rope also on Qwen2.5-VL targets).

Training (training-time test; methods/eagle3_training.py): see there.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from methods.eagle2 import Eagle2, Eagle2Options, Eagle2Proposer, published_config
from vispec_bench.drafts.draft_layer import draft_layer_config
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

    def __init__(self, config, layer_class):
        super().__init__()
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
        # transformers renamed the attention's cache argument (past_key_values -> cache) after 5.17
        parameters = inspect.signature(type(attention).forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"

    def forward(self, token_embeds, hidden, position_embeddings, attention_mask, cache=None):
        """token_embeds, hidden [B, n, H] -> the layer's output [B, n, H]."""
        x = torch.cat([self.input_layernorm(token_embeds), self.hidden_norm(hidden)], dim=-1)  # [B, n, 2H]
        attended = self.self_attn(hidden_states=x, position_embeddings=position_embeddings,
                                  attention_mask=attention_mask, **{self._cache_argument: cache})[0]
        hidden = hidden + attended
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class Eagle3Draft(nn.Module):
    """fc(cat of three target layer inputs) -> midlayer -> norm -> lm_head over the draft vocabulary.

    `layer_ids`: the target decoder layers whose inputs are fused (not in the state dict: the
    method finds them in the checkpoint's config or its options). `draft_vocab_size`: rows of
    lm_head. `published`: a published draft's config.json (layer shapes, target_hidden_size)."""

    def __init__(self, text_config, layer_ids: tuple[int, ...], draft_vocab_size: int,
                 published: dict | None = None):
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
        self.fc = nn.Linear(len(self.layer_ids) * target_hidden, hidden, bias=False)
        self.midlayer = Eagle3Layer(config, layer_class)
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
