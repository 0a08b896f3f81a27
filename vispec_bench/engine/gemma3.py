"""The Gemma 3 target adapter (Gemma3ForConditionalGeneration: SigLIP vision + Gemma 3 text).

What differs from the LLaVA-style adapter, checked against HF's modeling_gemma3:

- Image tokens attend to each other bidirectionally within an image at prefill. HF builds that
  mask from `token_type_ids` (1 at image soft tokens), which Gemma3Processor returns and the
  adapter's prefill passes on with the rest of the processor's output. Decode-time tokens are
  text: causal, as in HF's generate (which drops token_type_ids after the first step).
- Sliding-window layers. HF's hybrid caches keep only the last `sliding_window` entries of a
  sliding layer (DynamicSlidingWindowLayer, StaticSlidingWindowLayer), which a verify round
  cannot roll back: a rejected draft token would already have pushed an accepted one out. So
  the adapter's caches keep every entry in every layer (a config whose layer types are all
  full attention lays them out), and the window lives in the masks instead: HF builds them at
  prefill and for a plain causal step; for a tree-verify block, whose 4-D mask the adapter
  builds, the decoder gets a per-layer-type mask ({"full_attention": tree mask,
  "sliding_attention": tree mask and the window}), the form Gemma3TextModel takes from
  generate. The window is HF's: key j is visible from query position p iff p - j < window.
- The input embedding is Gemma3TextScaledWordEmbedding (ids -> embedding * sqrt(hidden)):
  model.get_input_embeddings() is that module, so `adapter.embed_tokens` (what the drafts
  read) scales as the decoder's own input does.
- final_logit_softcapping: Gemma3ForConditionalGeneration's forward does not apply it (only
  the text-only Gemma3ForCausalLM does), so neither does this adapter: its logits are
  lm_head(hidden), as HF's for this class.
- The processor's `image_token` is the begin-of-image marker the chat template writes
  (`<start_of_image>`), which it expands into the soft tokens (`tokenizer.image_token`) that
  the model replaces with image features; the id check compares the soft token.
"""

from __future__ import annotations

import copy

import torch

from vispec_bench.engine.adapter import ImageTokenError, TargetAdapter


def full_attention_config(text_config):
    """A copy of the text config whose layers are all full attention: the layout of a KV cache
    that keeps every entry (the sliding window is applied by the masks)."""
    config = copy.deepcopy(text_config)
    config.layer_types = ["full_attention"] * text_config.num_hidden_layers
    return config


def windowed(mask: torch.Tensor, query_positions: torch.Tensor, sliding_window: int) -> torch.Tensor:
    """An additive mask [1, 1, n, kv] over cache slots 0..kv-1 with the sliding window added:
    slot j stays visible from a query at position p only if p - j < sliding_window (HF's
    sliding_window_overlay). Slot j holds position j (Gemma's positions are cache indices); a
    block's own slots sit after `past`, so their ancestors (depth < window) are never cut."""
    slots = torch.arange(mask.shape[-1], device=mask.device)  # [kv]
    outside = (query_positions.reshape(-1, 1) - slots[None, :]) >= sliding_window  # [n, kv]
    return mask.masked_fill(outside[None, None], torch.finfo(mask.dtype).min)


class SlidingWindowDecoder:
    """Gemma3TextModel called with a per-layer-type mask when the adapter passes a 4-D one.

    Everything else (parameters, hooks, layers) is the wrapped module's."""

    def __init__(self, decoder, sliding_window: int | None):
        self.module = decoder
        self.sliding_window = sliding_window

    def __call__(self, *, attention_mask=None, position_ids=None, **kwargs):
        if torch.is_tensor(attention_mask) and attention_mask.dim() == 4:
            sliding = attention_mask if self.sliding_window is None else \
                windowed(attention_mask, position_ids, self.sliding_window)
            attention_mask = {"full_attention": attention_mask, "sliding_attention": sliding}
        return self.module(attention_mask=attention_mask, position_ids=position_ids, **kwargs)

    def __getattr__(self, name):
        return getattr(self.module, name)


class Gemma3Adapter(TargetAdapter):
    """Gemma3ForConditionalGeneration; see the module docstring for what it handles."""

    family = "gemma3"

    def __init__(self, model, processor, engine=None):
        super().__init__(model, processor, engine)
        layer_types = getattr(self.text_config, "layer_types", None) or []
        self.sliding_window = self.text_config.sliding_window if "sliding_attention" in layer_types else None
        self.decoder = SlidingWindowDecoder(self.decoder, self.sliding_window)
        self._full_cache_config = full_attention_config(self.text_config)

    def cache_config(self):
        return self._full_cache_config

    def _check_image_token_id(self) -> int:
        model_id = getattr(self.config, "image_token_id", None)
        if model_id is None:
            raise ImageTokenError(f"{type(self.model).__name__} config has no image_token_id")
        soft_token = getattr(self.tokenizer, "image_token", None)
        if soft_token is None:
            raise ImageTokenError(
                "the tokenizer defines no image_token (Gemma 3's <image_soft_token>, which the processor "
                "expands each image into): use the processor that ships with this checkpoint")
        processor_id = self.tokenizer.convert_tokens_to_ids(soft_token)
        if processor_id != model_id:
            raise ImageTokenError(
                f"the processor expands images into {soft_token!r} (id {processor_id}), but the model config "
                f"expects image_token_id {model_id}: image features would be scattered nowhere. Use the "
                "processor that ships with this checkpoint.")
        return int(model_id)
