"""Target adapters (seam 1 of docs/architecture.md): one interface over HF VLM classes, driving HF's own modules.

The adapter owns the target's KV cache for one sample at a time:

    prompt = adapter.build_prompt(messages, images)   # chat template + image processing (untimed)
    out = adapter.prefill(prompt)                     # vision tower, projector, prompt forward
    logits, hidden = adapter.forward(ids, depths, ancestor_mask)   # k tokens, tree-masked
    adapter.commit(keep)                              # keep the accepted path, drop the rest

No modeling file is copied: prefill calls the HF base model (which merges image features and,
for Qwen2.5-VL, computes the 3-D mrope positions); a forward pre-hook on its language model
reads the merged input embeddings (so the image embeddings are exactly what the decoder saw)
and the positions it was given (so the rope offset comes from HF's own computation).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field

import torch

from vispec_bench.engine.engines import DEFAULT_VERIFY_SLACK, Engine, drop_last
from vispec_bench.errors import InputError, UserError


LANGUAGE_MODEL_ATTRIBUTES = ("language_model", "text_model")
# VLMs whose processor splits an image into sub-images, each its own run of image tokens.
SPLIT_IMAGE_CLASSES = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")


class ImageTokenError(UserError, ValueError):
    """A prompt's images have no placeholder tokens, or processor and model disagree on the id."""


@dataclass
class PreparedPrompt:
    model_inputs: dict  # processor output, on the model's device
    input_ids: torch.Tensor  # [S]
    num_images: int
    # [start, end) of each run of image tokens, in prompt order: one per image, or, where the
    # processor splits an image into sub-images (Idefics3 / SmolVLM), one per sub-image (its
    # tiles, then its global view); methods that compress an image (ViSpec, SpecVLM) do so per run.
    image_spans: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class PrefillOutput:
    logits: torch.Tensor  # [V] next-token logits after the prompt
    hidden: torch.Tensor  # [S, H] last hidden states (after the final norm) of every prompt token
    input_embeds: torch.Tensor  # [S, H] the decoder's input embeddings (image embeddings at image positions)
    image_embeds: torch.Tensor | None  # [num_image_tokens, H] decoder input at image positions
    position_offset: int  # next position = cache length + offset (Qwen2.5-VL rope delta; 0 elsewhere)


def cache_argument(module, cache) -> dict:
    """The cache keyword `module`'s forward takes: transformers renamed `past_key_values` to `cache`
    (5.25 warns on every forward given the old name; 5.40 drops it), while 5.17 knows only the old one.
    A compiled module is asked through the module it wraps."""
    module = getattr(module, "_orig_mod", module)
    return {_cache_keyword(type(module).forward if isinstance(module, torch.nn.Module) else module): cache}


@functools.lru_cache(maxsize=None)
def _cache_keyword(forward) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def _contiguous_spans(mask: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of True in a 1-D bool tensor."""
    spans, start = [], None
    for i, flag in enumerate(mask.tolist()):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(mask)))
    return spans


class TargetAdapter:
    """Adapter for LLaVA-style VLMs (Llava, LlavaNext) and text-only causal LMs (1-D positions)."""

    family = "llava"

    def __init__(self, model, processor, engine: Engine | None = None):
        self.model = model
        self.processor = processor
        self.config = model.config
        self.text_config = getattr(model.config, "text_config", model.config)
        base = model.model
        # The VLM's language model: `language_model` in most HF VLMs, `text_model` in Idefics3 / SmolVLM.
        language_model = next((getattr(base, name) for name in LANGUAGE_MODEL_ATTRIBUTES if hasattr(base, name)), None)
        self.is_vlm = language_model is not None
        self.decoder = language_model if self.is_vlm else base
        self.lm_head = model.get_output_embeddings()
        self.embed_tokens = model.get_input_embeddings()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.eos_token_ids = self._eos_token_ids()
        self.image_token_id = self._check_image_token_id() if self.is_vlm else None
        self.engine = engine or Engine("eager", self.device)
        self.cache = None
        self._length = 0  # entries in the cache (tracked here: a static cache's own count is a device tensor)
        self._appended = 0  # entries the last forward appended (its block padded to the engine's bucket)
        self._captured: dict = {}
        self._position_offset = 0
        # Intermediate-layer features (EAGLE-3): decoder-layer indices whose inputs prefill and every
        # forward also return, concatenated, in `layer_features`; None = not asked (no cost).
        self.captured_layer_ids: tuple[int, ...] | None = None
        self.layer_features: torch.Tensor | None = None  # [n, len(ids) * H] of the last prefill/forward
        self._step = self.engine.compile(self._decode_step)  # the verify/decode forward, compiled on `compiled`

    # --- identity -------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.lm_head.weight.shape[0]

    def _eos_token_ids(self) -> list[int]:
        ids = set()
        for source in (self.model.generation_config, self.text_config, self.config):
            value = getattr(source, "eos_token_id", None)
            if value is not None:
                ids.update([value] if isinstance(value, int) else value)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        if not ids:
            raise InputError("the model and tokenizer define no eos_token_id; decoding would never stop at EOS")
        return sorted(ids)

    def _check_image_token_id(self) -> int:
        model_id = getattr(self.config, "image_token_id", None)
        if model_id is None:
            model_id = getattr(self.config, "image_token_index", None)
        if model_id is None:
            raise ImageTokenError(f"{type(self.model).__name__} config has no image_token_id / image_token_index")
        processor_id = getattr(self.processor, "image_token_id", None)
        if processor_id is None and hasattr(self.processor, "image_token"):
            processor_id = self.tokenizer.convert_tokens_to_ids(self.processor.image_token)
        if processor_id is not None and processor_id != model_id:
            raise ImageTokenError(
                f"the processor's image token {getattr(self.processor, 'image_token', '?')!r} has id {processor_id}, "
                f"but the model config expects image_token_id {model_id}: image features would be scattered "
                "nowhere. Use the processor that ships with this checkpoint.")
        return int(model_id)

    # --- prompt ---------------------------------------------------------------------------
    def build_prompt(self, messages: list[dict], images: list) -> PreparedPrompt:
        """Apply the chat template and process images; fail loudly if images get no tokens."""
        if images and not self.is_vlm:
            raise InputError(f"{type(self.model).__name__} is a text-only model, but the sample has "
                             f"{len(images)} image(s); use a VLM or a text-only suite")
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if images:
            inputs = self.processor(images=images, text=text, return_tensors="pt")
        else:
            inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        inputs = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in dict(inputs).items()}
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        input_ids = inputs["input_ids"][0]
        spans = self.check_image_tokens(input_ids, len(images)) if images else []
        return PreparedPrompt(inputs, input_ids, len(images), spans)

    def check_image_tokens(self, input_ids: torch.Tensor, num_images: int) -> list[tuple[int, int]]:
        """[start, end) of each image's placeholder run; raises if the ids hold none or the count is off."""
        image_mask = input_ids == self.image_token_id
        if not bool(image_mask.any()):
            raise ImageTokenError(
                f"the prompt has {num_images} image(s) but none of its {len(input_ids)} tokens is the image "
                f"token id {self.image_token_id}: the chat template or processor did not insert image "
                "placeholders the model recognises, so the model would never see the image")
        return self._image_spans(image_mask, num_images)

    def runs_per_image(self, input_ids: torch.Tensor, image_spans: list[tuple[int, int]]) -> list[int]:
        """How many of `image_spans` (as check_image_tokens returned them) each image has: one here;
        adapters whose processor splits an image into sub-images say otherwise."""
        return [1] * len(image_spans)

    def _image_spans(self, image_mask: torch.Tensor, num_images: int) -> list[tuple[int, int]]:
        spans = _contiguous_spans(image_mask.cpu())
        if len(spans) != num_images:
            raise ImageTokenError(
                f"expected {num_images} runs of image tokens, found {len(spans)} at {spans}"
                + ("; images that touch in the prompt merge into one run: put text (even a space) between them"
                   if len(spans) < num_images else ""))
        return spans

    def capture_layers(self, layer_ids) -> None:
        """From now on, prefill and every forward also keep the inputs of these decoder layers (HF's
        `output_hidden_states[i]`: the embeddings for 0, layer i - 1's output otherwise), concatenated
        in the given order, in `layer_features` [n, len(layer_ids) * H], from the same forward (no
        second one). None stops it. Set it before the compiled engine's warm-up: it is part of the graph."""
        if layer_ids is None:
            self.captured_layer_ids, self.layer_features = None, None
            return
        layer_ids = tuple(int(i) for i in layer_ids)
        num_layers = self.text_config.num_hidden_layers
        if not layer_ids or any(not 0 <= i < num_layers for i in layer_ids):
            raise InputError(f"capture_layers: expected decoder-layer indices in [0, {num_layers}) (the inputs of "
                             f"the target's {num_layers} layers), got {list(layer_ids)}")
        self.captured_layer_ids = layer_ids

    def _layer_features(self, out) -> torch.Tensor | None:
        """[n, k * H] from a decoder output asked for its hidden states; None when not capturing."""
        if self.captured_layer_ids is None:
            return None
        return torch.cat([out.hidden_states[i][0] for i in self.captured_layer_ids], dim=-1)

    # --- cache ----------------------------------------------------------------------------
    @property
    def cache_length(self) -> int:
        return self._length

    def reserve(self, tokens: int) -> None:
        """Static engines: room for `tokens` cache entries (prompt + token cap + verify block)."""
        self.engine.reserve(tokens)

    def cache_config(self):
        """The config the target's KV cache is laid out from (Gemma 3 keeps every layer's entries)."""
        return self.text_config

    def commit(self, keep: list[int]) -> None:
        """Keep `keep` (ascending indices into the last forward's tokens), drop the rest.

        The last forward appended its block (padded to its bucket on a compiled engine) after
        `past`; the accepted path is moved to the front of that block, then the tail is cropped.
        """
        num_appended = self._appended
        past = self._length - num_appended
        num_keep = len(keep)
        if keep != list(range(num_keep)):
            index = torch.tensor(keep, device=self.device) + past
            for layer in self.cache.layers:
                layer.keys[..., past:past + num_keep, :] = layer.keys[..., index, :]
                layer.values[..., past:past + num_keep, :] = layer.values[..., index, :]
        if num_appended > num_keep:
            drop_last(self.cache, num_appended - num_keep)
        self._length = past + num_keep
        self._appended = 0

    # --- forwards -------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, prompt: PreparedPrompt) -> PrefillOutput:
        self.engine.reserve(len(prompt.input_ids) + DEFAULT_VERIFY_SLACK)
        self.cache = self.engine.new_cache(self.cache_config())
        self._captured = {}
        handle = self.decoder.register_forward_pre_hook(self._capture_decoder_inputs, with_kwargs=True)
        try:
            base = self.model.model
            out = base(**prompt.model_inputs, **cache_argument(base, self.cache), use_cache=True,
                       **self._hidden_states_request())
        finally:
            handle.remove()
        hidden = out.last_hidden_state[0]  # [S, H]
        self.layer_features = self._layer_features(out)  # [S, k * H] or None
        logits = self.lm_head(hidden[-1:]).float()[0]  # [V]
        input_embeds = self._captured.get("inputs_embeds")
        input_embeds = self.embed_tokens(prompt.input_ids) if input_embeds is None else input_embeds[0]  # [S, H]
        image_embeds = None
        if prompt.num_images:
            image_embeds = input_embeds[prompt.input_ids == self.image_token_id]  # [num_image_tokens, H]
        self._position_offset = self._offset_from_prefill_positions(len(prompt.input_ids))
        self._length, self._appended = len(prompt.input_ids), 0
        return PrefillOutput(logits, hidden, input_embeds, image_embeds, self._position_offset)

    def _hidden_states_request(self) -> dict:
        return {"output_hidden_states": True} if self.captured_layer_ids is not None else {}

    def _capture_decoder_inputs(self, module, args, kwargs):
        self._captured = {"inputs_embeds": kwargs.get("inputs_embeds"), "position_ids": kwargs.get("position_ids")}

    def _offset_from_prefill_positions(self, prompt_length: int) -> int:
        return 0

    def position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """[n] cache positions -> the decoder's position_ids ([1, n] here)."""
        return (positions + self._position_offset)[None]

    @torch.no_grad()
    def forward(self, token_ids: torch.Tensor, depths: torch.Tensor | None = None,
                ancestor_mask: torch.Tensor | None = None, logits: bool = True
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Run n new tokens through the decoder, appending them to the cache.

        token_ids [n]; depths [n] (position = cache length + depth; default 0..n-1);
        ancestor_mask [n, n] bool, True where token i may attend to token j (itself and its
        ancestors); None means causal. Returns float32 logits [n, V] (None if not asked for) and
        hidden states [n, H].
        """
        num_tokens = token_ids.shape[0]
        past = self._length
        if depths is None:
            depths = torch.arange(num_tokens, device=self.device)
        if self.engine.static:
            logits_out, hidden = self._static_forward(token_ids, depths, ancestor_mask, past)
            return (logits_out if logits else None), hidden
        attention_mask = None
        if ancestor_mask is not None and num_tokens > 1:
            # 4-D additive mask [1, 1, n, past + n]: every token sees the whole cache, and within
            # the new block only its ancestors (tree attention, SpecInfer/EAGLE).
            attention_mask = torch.zeros(1, 1, num_tokens, past + num_tokens, device=self.device, dtype=self.dtype)
            attention_mask[0, 0, :, past:].masked_fill_(~ancestor_mask, torch.finfo(self.dtype).min)
        out = self.decoder(input_ids=token_ids[None], position_ids=self.position_ids(past + depths),
                           attention_mask=attention_mask, **cache_argument(self.decoder, self.cache), use_cache=True,
                           **self._hidden_states_request())
        self._length += num_tokens
        self._appended = num_tokens
        self.layer_features = self._layer_features(out)  # [n, k * H] or None
        hidden = out.last_hidden_state[0]  # [n, H]
        return (self.lm_head(hidden).float() if logits else None), hidden

    def _static_forward(self, token_ids, depths, ancestor_mask, past: int):
        """The block padded to its bucket (compiled engine), with a mask over the whole capacity:
        the cache up to `past`, the block's own ancestors (causal when none given); a padding row
        sees only itself and its logits are dropped."""
        num_tokens = token_ids.shape[0]
        padded = self.engine.bucket(num_tokens)
        pad = padded - num_tokens
        block = ancestor_mask if ancestor_mask is not None else torch.ones(
            num_tokens, num_tokens, dtype=torch.bool, device=self.device).tril()
        visible = torch.zeros(padded, past + padded, dtype=torch.bool, device=self.device)
        visible[:, :past] = True
        visible[:num_tokens, past:past + num_tokens] = block
        if pad:
            visible[num_tokens:, past + num_tokens:] = torch.eye(pad, dtype=torch.bool, device=self.device)
            token_ids = torch.cat([token_ids, token_ids.new_zeros(pad)])
            depths = torch.cat([depths, depths.new_zeros(pad)])
        logits, hidden, *features = self._step(token_ids[None], self.position_ids(past + depths),
                                               self.engine.mask(visible, self.dtype))
        self._length += padded
        self._appended = padded
        self.layer_features = features[0][:num_tokens] if features else None
        return logits[:num_tokens], hidden[:num_tokens]

    def _decode_step(self, token_ids, position_ids, attention_mask):
        """One decoder forward on the static cache: float32 logits [n, V] and hidden states [n, H]
        (and the captured layer features [n, k * H] when capture_layers asked for them)."""
        out = self.decoder(input_ids=token_ids, position_ids=position_ids, attention_mask=attention_mask,
                           **cache_argument(self.decoder, self.cache), use_cache=True, **self._hidden_states_request())
        hidden = out.last_hidden_state[0]
        features = self._layer_features(out)
        if features is None:
            return self.lm_head(hidden).float(), hidden
        return self.lm_head(hidden).float(), hidden, features

    @torch.no_grad()
    def teacher_forced_logits(self, prompt: PreparedPrompt, new_ids: list[int]) -> torch.Tensor:
        """Logits [len(new_ids) + 1, V] of the target at each generated position (diagnostics, untimed)."""
        first = self.prefill(prompt).logits
        if not new_ids:
            return first[None]
        ids = torch.tensor(new_ids, device=self.device)
        logits, _ = self.forward(ids)
        return torch.cat([first[None], logits], dim=0)


class MRopeAdapter(TargetAdapter):
    """Qwen2-VL, Qwen2.5-VL and Qwen3-VL (3-D M-RoPE): text tokens after the prompt use 3-D
    positions equal in all three sections, shifted by the rope delta that the image grid
    introduced during prefill (HF's get_rope_index; the next text position is max + 1).

    With equal sections the rotation is 1-D rope whatever the section layout, contiguous
    (Qwen2/2.5-VL) or interleaved (Qwen3-VL). Qwen3-VL's deepstack features (vision-block
    outputs added at image positions after the first decoder layers) enter in prefill, which
    runs HF's own model; verify and decode tokens are text and get none."""

    family = "qwen_mrope"

    def _offset_from_prefill_positions(self, prompt_length: int) -> int:
        positions = self._captured.get("position_ids")
        if positions is None:  # text-only prompt: HF used plain 0..S-1
            return 0
        if positions.shape[0] == 4:  # some versions prepend the 1-D text positions
            positions = positions[1:]
        return int(positions.max()) + 1 - prompt_length

    def position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        return (positions + self._position_offset).view(1, 1, -1).expand(3, 1, -1)


Qwen25VLAdapter = MRopeAdapter  # its earlier name
MROPE_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def make_adapter(model, processor, engine: Engine | str = "eager") -> TargetAdapter:
    """The adapter for the model's family, running its forwards on `engine` (a name or an Engine)."""
    if isinstance(engine, str):
        engine = Engine(engine, next(model.parameters()).device)
    if getattr(model.config, "model_type", None) in MROPE_MODEL_TYPES:
        return MRopeAdapter(model, processor, engine)
    if type(model).__name__ == "Gemma3ForConditionalGeneration":
        from vispec_bench.engine.gemma3 import Gemma3Adapter

        return Gemma3Adapter(model, processor, engine)
    if type(model).__name__ in SPLIT_IMAGE_CLASSES:
        from vispec_bench.engine.split_image_adapter import SplitImageAdapter

        return SplitImageAdapter(model, processor, engine)
    return TargetAdapter(model, processor, engine)
