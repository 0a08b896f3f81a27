"""The EAGLE draft's decoder layer: one layer of the target's family (HF's own module), shaped
like the target's, or, for a published draft, like its own config.json says."""

from __future__ import annotations

import functools

from vispec_bench.errors import InputError

# Draft layer families: the target's text model_type -> (module, config class, layer class, rotary class).
DRAFT_FAMILIES = {
    "llama": ("transformers.models.llama.modeling_llama", "LlamaConfig", "LlamaDecoderLayer", "LlamaRotaryEmbedding"),
    "qwen2": ("transformers.models.qwen2.modeling_qwen2", "Qwen2Config", "Qwen2DecoderLayer", "Qwen2RotaryEmbedding"),
    # Qwen3: no q/k/v biases, RMSNorm on each head's queries and keys (q_norm, k_norm)
    "qwen3": ("transformers.models.qwen3.modeling_qwen3", "Qwen3Config", "Qwen3DecoderLayer", "Qwen3RotaryEmbedding"),
    "gemma3": ("transformers.models.gemma3.modeling_gemma3", "Gemma3TextConfig", "Gemma3DecoderLayer",
               "Gemma3RotaryEmbedding"),
}
FAMILY_OF_MODEL_TYPE = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen2_vl_text": "qwen2",
                        "qwen2_vl": "qwen2", "qwen2_5_vl_text": "qwen2", "qwen2_5_vl": "qwen2",
                        "qwen3": "qwen3", "qwen3_vl_text": "qwen3", "qwen3_vl": "qwen3", "gemma3_text": "gemma3"}


def _rope_parameters(text_config) -> dict:
    params = dict(getattr(text_config, "rope_parameters", None) or {})
    theta = params.get("rope_theta", getattr(text_config, "rope_theta", 10000.0))
    if params.get("rope_type", "default") != "default" and "mrope_section" not in params:
        return params  # e.g. llama3 scaling: the draft uses the target's rope
    # The 3-D mrope of Qwen2-VL, Qwen2.5-VL and Qwen3-VL (contiguous or interleaved sections,
    # `mrope_interleaved`) collapses to 1-D rope when all three position ids are equal; the draft
    # uses 1-D positions over token indices, as the ViSpec reference does.
    return {"rope_type": "default", "rope_theta": theta}


# What a published draft's config.json (the reference's EConfig, Llama-style) may set for its layer.
PUBLISHED_LAYER_KEYS = ("intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                        "hidden_act", "max_position_embeddings")


class PublishedTextConfig:
    """The target's text config seen through a published draft's config.json: the reference
    builds the draft's layer from its own config (e.g. the ViSpec repo's Qwen2.5-VL-3B drafts have
    16 key/value heads where the target has 2), so its shapes win; hidden size and vocabulary
    were checked against the target before (vispec_bench.drafts.checkpoints.check_published).
    The reference's layer is Llama's, with q/k/v biases when `qkv_bias` is set: that is HF's
    Qwen2 layer, so the family follows `qkv_bias`, not the target. A layer key config.json lacks
    takes the target's value (the reference would take its EConfig default, Llama-7B's)."""

    def __init__(self, text_config, published: dict):
        self._target = text_config
        self._published = {k: published[k] for k in PUBLISHED_LAYER_KEYS if published.get(k) is not None}
        if "num_attention_heads" in self._published and "num_key_value_heads" not in self._published:
            self._published["num_key_value_heads"] = self._published["num_attention_heads"]  # as the reference's EConfig
        self.model_type = "qwen2" if published.get("qkv_bias") else "llama"
        self.attention_bias = bool(published.get("qkv_bias"))
        scaling = published.get("rope_scaling")
        theta = published.get("rope_theta", 10000.0)
        self.rope_parameters = ({**scaling, "rope_type": scaling.get("rope_type", scaling.get("type")), "rope_theta": theta}
                                if scaling else {"rope_type": "default", "rope_theta": theta})

    def __getattr__(self, name):
        if name in self._published:
            return self._published[name]
        return getattr(self._target, name)


def _gemma3_layer_options(text_config) -> dict:
    """Gemma 3's layer beyond the shared shapes: its activation, attention scale and softcap, and
    one full-attention layer (the draft sees its whole, short cache: no window) with the rope of
    the target's global layers (theta 1e6, and their scaling if any, e.g. linear x8 on 4B+)."""
    rope = dict(text_config.rope_parameters)
    return dict(hidden_activation=text_config.hidden_activation, query_pre_attn_scalar=text_config.query_pre_attn_scalar,
                attn_logit_softcapping=text_config.attn_logit_softcapping, layer_types=["full_attention"],
                sliding_window=None, rope_parameters={"full_attention": dict(rope["full_attention"]),
                                                      "sliding_attention": dict(rope["sliding_attention"])})


@functools.lru_cache(maxsize=None)
def _full_attention_rotary(rotary_class):
    """Gemma 3's rotary embedding keeps one table per layer type and takes the type per call;
    the draft's single layer is a full-attention one, so its rotary defaults to that type."""

    class FullAttentionRotaryEmbedding(rotary_class):
        def forward(self, x, position_ids, layer_type="full_attention"):
            return super().forward(x, position_ids, layer_type)

    return FullAttentionRotaryEmbedding


def draft_layer_config(text_config, published: dict | None = None):
    """(config, layer class, rotary class) of the draft's decoder layer: the target's family and
    shapes, or, for a published draft, those of its own config.json."""
    import importlib

    if published:
        text_config = PublishedTextConfig(text_config, published)
    model_type = getattr(text_config, "model_type", "")
    family = FAMILY_OF_MODEL_TYPE.get(model_type)
    if family is None:
        raise InputError(f"no EAGLE draft layer for target model_type {model_type!r}; "
                         f"supported: {', '.join(sorted(FAMILY_OF_MODEL_TYPE))}")
    module_name, config_name, layer_name, rotary_name = DRAFT_FAMILIES[family]
    module = importlib.import_module(module_name)
    config_class = getattr(importlib.import_module(f"transformers.models.{family}.configuration_{family}"), config_name)
    options = dict(
        hidden_size=text_config.hidden_size, intermediate_size=text_config.intermediate_size,
        num_attention_heads=text_config.num_attention_heads,
        num_key_value_heads=getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads,
        head_dim=getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads,
        rms_norm_eps=text_config.rms_norm_eps, hidden_act=getattr(text_config, "hidden_act", "silu"),
        max_position_embeddings=text_config.max_position_embeddings, vocab_size=text_config.vocab_size,
        num_hidden_layers=1, rope_parameters=_rope_parameters(text_config),
        attention_bias=getattr(text_config, "attention_bias", family == "qwen2"))
    rotary_class = getattr(module, rotary_name)
    if family == "gemma3":
        del options["hidden_act"]  # Gemma's config calls it hidden_activation
        options.update(_gemma3_layer_options(text_config))
        rotary_class = _full_attention_rotary(rotary_class)
    config = config_class(**options)
    config._attn_implementation = "sdpa"
    return config, getattr(module, layer_name), rotary_class
