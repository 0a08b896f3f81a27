"""The `speculators` layout (vllm-project/speculators, what vLLM serves): read without the package.

A speculators draft directory holds `config.json` with `speculators_model_type`, a
`speculators_config` (the verifier it was trained for: `name_or_path`, `architectures`),
`transformer_layer_config` (the HF config of its decoder layer, serialised as a diff against
that class's defaults) and variant keys, plus `model.safetensors`. Two variants are drafts this
package has:

- `eagle` (EAGLE-1 / EAGLE-2 / HASS; speculators <= 0.4): fusion_fc over cat(embedding, hidden),
  one decoder layer `transformer.*` whose input norm is removed, `fusion_bias` for fc's bias.
  With `layernorms: true` it adds embedding_layernorm, the layer's input_layernorm and
  pre_lm_head_layernorm — normalisations the EAGLE draft here lacks, so that variant is refused.
- `eagle3`: fc over the concatenated auxiliary target features (`eagle_aux_hidden_state_layer_ids`,
  indices into HF's `hidden_states` tuple: the input of that decoder layer), `layers.0.*` (the
  EAGLE-3 first layer: hidden_norm, input_layernorm, attention over 2H), norm, lm_head over
  `draft_vocab_size` tokens, d2t/t2d when that vocabulary is reduced; `norm_before_residual`
  (the residual taken after hidden_norm) is passed on to the draft. Options the EAGLE-3 draft
  here does not have (more layers, norm_before_fc, fc_norm, norm_output, a Qwen3 layer with q/k
  norms, a draft width other than the target's) are refused by name.

`translate` maps either onto the names and the flat config.json keys of the EAGLE authors'
layouts, which the `eagle2` and `eagle3` drafts load (vispec_bench.drafts.published).
"""

from __future__ import annotations

import torch

from vispec_bench.drafts.checkpoints import DraftCheckpointError

# Decoder-layer families a speculators draft may name, by transformer_layer_config's model_type.
EAGLE_LAYER_TYPES = {"llama": False, "mistral": False, "qwen2": True}  # model_type -> q/k/v bias
EAGLE3_LAYER_TYPES = ("llama",)  # the EAGLE-3 reference's first layer is Llama's (no q/k norms)
EAGLE3_UNSUPPORTED_FLAGS = {
    "norm_before_fc": "an RMSNorm over the concatenated target features before fc",
    "fc_norm": "an RMSNorm per target feature before fc",
    "norm_output": "normalised hidden states fed back between draft steps (EAGLE 3.1)",
}
# Keys a speculators checkpoint may hold that are the verifier's (copies), not the draft's: the draft
# here reads the target's own embedding (and, for `eagle`, its lm_head).
VERIFIER_KEYS = {"eagle": ("embed_tokens.", "lm_head."),
                 "eagle3": ("embed_tokens.", "verifier_lm_head.", "verifier_norm.")}


def is_speculators(config: dict) -> bool:
    return "speculators_model_type" in config or "speculators_config" in config


def layer_config(config: dict, default_model_type: str):
    """transformer_layer_config as the HF config object it was serialised from (defaults filled in)."""
    from transformers import AutoConfig

    fields = dict(config.get("transformer_layer_config") or {})
    model_type = fields.pop("model_type", None) or default_model_type
    try:
        return AutoConfig.for_model(model_type, **fields)
    except ValueError as error:
        raise DraftCheckpointError(f"speculators transformer_layer_config has model_type {model_type!r}, which "
                                   f"this transformers version does not know ({error})") from None


def flat_layer_keys(layer) -> dict:
    """The EAGLE authors' config.json keys for a decoder layer of this HF config."""
    rope = dict(getattr(layer, "rope_parameters", None) or {})
    theta = rope.get("rope_theta", getattr(layer, "rope_theta", 10000.0))
    scaled = rope.get("rope_type", "default") != "default"
    return {"hidden_size": layer.hidden_size, "vocab_size": layer.vocab_size,
            "intermediate_size": layer.intermediate_size, "num_attention_heads": layer.num_attention_heads,
            "num_key_value_heads": getattr(layer, "num_key_value_heads", None) or layer.num_attention_heads,
            "head_dim": getattr(layer, "head_dim", None) or layer.hidden_size // layer.num_attention_heads,
            "rms_norm_eps": layer.rms_norm_eps, "hidden_act": getattr(layer, "hidden_act", "silu"),
            "max_position_embeddings": layer.max_position_embeddings, "rope_theta": theta,
            "rope_scaling": rope if scaled else None}


def verifier_of(config: dict) -> dict:
    verifier = (config.get("speculators_config") or {}).get("verifier") or {}
    return {"verifier_name_or_path": verifier.get("name_or_path"),
            "verifier_architectures": list(verifier.get("architectures") or [])}


def renamed(state: dict[str, torch.Tensor], prefixes: dict[str, str], dropped: tuple[str, ...]) -> dict:
    out = {}
    for key, value in state.items():
        if key.startswith(dropped):
            continue
        for old, new in prefixes.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def translate(state: dict[str, torch.Tensor], config: dict, what: str) -> tuple[dict, dict, str]:
    """(state dict under the EAGLE authors' names, their flat config.json keys, the method it is for)."""
    kind = config.get("speculators_model_type") or (config.get("speculators_config") or {}).get("algorithm")
    if kind == "eagle":
        return _translate_eagle(state, config, what)
    if kind == "eagle3":
        return _translate_eagle3(state, config, what)
    raise DraftCheckpointError(f"{what} is a speculators {kind!r} draft; this package loads the speculators "
                               "'eagle' (EAGLE-1/HASS, with --method-args eagle2.draft=DIR) and 'eagle3' "
                               "(eagle3.draft=DIR) variants")


def _translate_eagle(state, config, what):
    if config.get("layernorms"):
        raise DraftCheckpointError(
            f"{what} is a speculators 'eagle' draft with layernorms: true (embedding_layernorm, the layer's "
            "input_layernorm and pre_lm_head_layernorm); this package's EAGLE draft has none of these "
            "normalisations, so it cannot reproduce that draft")
    layer = layer_config(config, "llama")
    if layer.model_type not in EAGLE_LAYER_TYPES or getattr(layer, "mlp_bias", False):
        raise DraftCheckpointError(f"{what}: speculators 'eagle' decoder layer of type {layer.model_type!r}"
                                   f"{' with mlp_bias' if getattr(layer, 'mlp_bias', False) else ''}; this "
                                   f"package's EAGLE draft layer is one of {sorted(EAGLE_LAYER_TYPES)}")
    architecture = config.get("transformer_layer_architecture", "auto")
    expected = type(layer).__name__.removesuffix("Config") + "DecoderLayer"
    if architecture not in ("auto", expected):
        raise DraftCheckpointError(f"{what}: transformer_layer_architecture {architecture!r}; expected "
                                   f"{expected!r} for a {layer.model_type} layer config")
    published = {**flat_layer_keys(layer), "bias": bool(config.get("fusion_bias", False)),
                 "qkv_bias": EAGLE_LAYER_TYPES[layer.model_type] or bool(getattr(layer, "attention_bias", False)),
                 **verifier_of(config)}
    state = renamed(state, {"fusion_fc.": "fc.", "transformer.": "layers.0."}, VERIFIER_KEYS["eagle"])
    return state, published, "eagle2"


def _translate_eagle3(state, config, what):
    layer = layer_config(config, "qwen3")  # speculators' own default for eagle3
    if layer.model_type not in EAGLE3_LAYER_TYPES:
        raise DraftCheckpointError(f"{what}: speculators 'eagle3' decoder layer of type {layer.model_type!r}; "
                                   f"this package's EAGLE-3 draft layer is the reference's ({EAGLE3_LAYER_TYPES})")
    problems = [f"{flag} ({meaning})" for flag, meaning in EAGLE3_UNSUPPORTED_FLAGS.items() if config.get(flag)]
    if layer.num_hidden_layers != 1:
        problems.append(f"{layer.num_hidden_layers} decoder layers (the reference draft has one)")
    target_width = config.get("target_hidden_size")
    if target_width not in (None, layer.hidden_size):
        problems.append(f"a draft width {layer.hidden_size} other than the target's {target_width}")
    if getattr(layer, "attention_bias", False) or getattr(layer, "mlp_bias", False):
        problems.append("attention or MLP biases")
    if problems:
        raise DraftCheckpointError(f"{what} is a speculators 'eagle3' draft with " + "; ".join(problems)
                                   + ": this package's EAGLE-3 draft (the reference's) has no such option")
    published = {**flat_layer_keys(layer), "draft_vocab_size": int(config.get("draft_vocab_size", layer.vocab_size)),
                 "eagle_aux_hidden_state_layer_ids": config.get("eagle_aux_hidden_state_layer_ids"),
                 "norm_before_residual": bool(config.get("norm_before_residual", False)),
                 **verifier_of(config)}
    return renamed(state, {"layers.0.": "midlayer."}, VERIFIER_KEYS["eagle3"]), published, "eagle3"
