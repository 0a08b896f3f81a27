"""SpecVLM (Li et al., arXiv 2509.11815): EagleVLM's draft behind an elastic visual compressor.

The draft is EagleVLM's (methods/eaglevlm.py: EAGLE-2's fc + one decoder layer of the target's
family, with the layer's input RMSNorm kept). In front of it, each image's embeddings [n, H]
(the target's decoder inputs at that image's positions, what ViSpec's adaptor reads) become m
compressed tokens [m, H], and the draft sees those instead of the image: its prefill and its KV
cache shrink by n - m per image. The splice is ViSpec's (methods/vispec.py, splice_compressed):
the pairs that carry the image's tokens are replaced by the m compressed tokens at the image's
trailing pair positions e - 1 - m ... e - 2; text after the image keeps its positions; the
compressed tokens enter the decoder layer directly (no fc, no target feature). No global
feature (ViSpec's img_fc has no counterpart here). Each image is compressed on its own, with its
own gate decision.

Primitives (candidates: prune, pool and conv at each ratio r of `ratios`, plus the resampler):
- prune/r: a learned score Linear(H -> 1) per token; the top ceil(n/r) tokens are kept, in
  their original order, as they are. One scorer serves every ratio (the score ranks tokens, the
  ratio says how many to keep). The score's gradient: scaling a kept token by sigmoid(score)
  would give none, because the draft layer's input RMSNorm removes any per-token scale (and a
  compressed row's own output is read by nothing: only its key and value are), so instead, in
  training, the kept token's attention logits get a straight-through bias
  logsigmoid(s) - logsigmoid(s).detach(): its value is 0, its gradient is that of multiplying
  the token's attention weight by sigmoid(s). At inference no bias: the selection alone.
- pool/r: the mean over consecutive windows of r tokens, 1-D over the image's token sequence
  (in the order the target lays them out), ceil(n/r) outputs, the last window partial. It needs
  no 2-D grid, so it works for any VLM's layout (LLaVA's 24x24, LLaVA-NeXT's tiles and
  newlines, Qwen2.5-VL's merged patches); neighbours in the sequence are only mostly neighbours
  in the image.
- conv/r: a depthwise Conv1d over the token sequence with kernel = stride = r (H * r weights +
  H biases: cheap at 7B width, where a full Conv1d would hold H^2 * r), then Linear(H -> H) to
  mix channels, which the depthwise conv cannot. Initialised to the pool's function (conv
  weights 1/r, Linear = identity, zero biases), so training starts from pooling. The input is
  padded to a multiple of r by repeating its last token. One conv and one Linear per ratio.
- resampler: num_q (default 2) learned queries cross-attending over the image: ViSpec's
  VisionAdaptor (imported, not copied), all num_q outputs used as compressed tokens. Its label
  is "resampler/<num_q>".

The gate (question-conditioned): input = cat(rms(mean of the image's embeddings), rms(mean of
the prompt's text-token embeddings)), where the prompt's text tokens are every non-image token
of the prompt (the chat template's tokens included; in training, the rows before
prompt_length, never the answer) and rms() scales a vector to unit root-mean-square (no
parameters: image and text embeddings can differ in scale by orders of magnitude) -> Linear(2H
-> gate_hidden) -> SiLU -> Linear(gate_hidden -> candidates) = logits. Training: hard
Gumbel-softmax at temperature `tau`; only the chosen candidate runs, and its straight-through
weight w (value 1) reaches the gate as a bias w - w.detach() on the attention logits of the
chosen candidate's tokens (value 0): again, multiplying the tokens by w would give the gate no
gradient through the layer's input RMSNorm. Inference: argmax, the chosen candidate alone, no
bias. `primitive` forces one primitive (the gate is not run): prune, pool and conv at `ratio`
(0 = the first of `ratios`; it must be one of them), or the resampler. The registry's
`specvlm-prune`, `specvlm-pool`, `specvlm-conv`, `specvlm-resampler` are these presets.

Text-only prompts: no compression, the gate is not run, and the draft computes EagleVLM's
function (the compressor's parameters are unused).

Draft-side cost: the proposer sets, in its prefill, `draft_visual_tokens` (compressed visual
tokens the draft's cache holds for the prompt) and `draft_compression` ("<primitive>/<ratio>"
per image, joined by ","; "" for text-only).

Checkpoints are of kind "specvlm" (the ablations load them too); training starts from an
EagleVLM draft (`train --method specvlm --init EAGLEVLM_DRAFT`: fc and layer loaded, the
compressor and gate fresh). Training is EAGLE's (methods/eagle2.py: 1.0 * SmoothL1 on the
feature + 0.1 * soft CE against the target's distribution, teacher features computed on the
fly by `train`) with the compressor and the gate trained jointly. `ratios`, `num_q` and
`gate_hidden` shape the draft: a checkpoint loads only with the values it was trained with.

Tree: the device's default, as every EAGLE-family method; the paper's tree (top-k 10, total
60, depth 7) is `--method-args specvlm.depth=7 specvlm.top_k=10 specvlm.total_token=60`.
No code was published with the paper: every choice above the paper does not state is ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vispec_bench.drafts.checkpoints import DraftCheckpointError, load_matching
from vispec_bench.drafts.vocab import BUFFER, set_token_map
from vispec_bench.errors import InputError
from methods.eagle2 import Eagle2Options, published_config
from methods.eaglevlm import EagleVLM
from methods.vispec import DirectInputDraft, SplicedProposer, SplicedTrainer, VisionAdaptor, splice_compressed

PRIMITIVES = ("prune", "pool", "conv", "resampler")


def parse_ratios(text: str) -> tuple[int, ...]:
    try:
        ratios = tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        ratios = ()
    if not ratios or min(ratios) < 2 or len(set(ratios)) != len(ratios):
        raise InputError(f"specvlm.ratios must be distinct integers >= 2 separated by commas, e.g. 4,16; got {text!r}")
    return ratios


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)


def straight_through(x: torch.Tensor) -> torch.Tensor:
    """Value 0, gradient that of x."""
    return x - x.detach()


class Prune(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.score = nn.Linear(hidden, 1)

    def forward(self, image: torch.Tensor, ratio: int):
        """image [n, H] -> (kept tokens [ceil(n/r), H] in order, their attention bias [m] in training, else None)."""
        scores = self.score(image).squeeze(-1)
        kept = scores.topk(math.ceil(image.shape[0] / ratio)).indices.sort().values
        bias = straight_through(nn.functional.logsigmoid(scores[kept].float())) if self.training else None
        return image[kept], bias


def pool(image: torch.Tensor, ratio: int) -> torch.Tensor:
    """Means over consecutive windows of `ratio` tokens (the last one partial): [n, H] -> [ceil(n/r), H]."""
    n, hidden = image.shape
    m = math.ceil(n / ratio)
    padded = torch.cat([image, image.new_zeros(m * ratio - n, hidden)])
    counts = (n - torch.arange(m, device=image.device) * ratio).clamp(max=ratio)
    return padded.view(m, ratio, hidden).sum(1) / counts[:, None].to(image.dtype)


class ConvCompressor(nn.Module):
    """Depthwise Conv1d (kernel = stride = r) over the token sequence, then Linear(H -> H); starts as pool."""

    def __init__(self, hidden: int, ratio: int):
        super().__init__()
        self.ratio = ratio
        self.conv = nn.Conv1d(hidden, hidden, kernel_size=ratio, stride=ratio, groups=hidden)
        self.proj = nn.Linear(hidden, hidden)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / ratio)
            self.conv.bias.zero_()
            self.proj.weight.copy_(torch.eye(hidden))
            self.proj.bias.zero_()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        n = image.shape[0]
        pad = math.ceil(n / self.ratio) * self.ratio - n
        x = torch.cat([image, image[-1:].expand(pad, -1)]) if pad else image
        return self.proj(self.conv(x.T[None])[0].T)


class Gate(nn.Module):
    def __init__(self, hidden: int, gate_hidden: int, num_candidates: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * hidden, gate_hidden), nn.SiLU(), nn.Linear(gate_hidden, num_candidates))

    def forward(self, image_mean: torch.Tensor, text_mean: torch.Tensor) -> torch.Tensor:
        """[H], [H] -> logits over the candidates [C]."""
        return self.mlp(torch.cat([_rms(image_mean), _rms(text_mean)]))


@dataclass
class Compressed:
    tokens: torch.Tensor  # [m, H]
    label: str  # "<primitive>/<ratio>" ("resampler/<num_q>")
    key_bias: torch.Tensor | None  # [m] straight-through attention bias (value 0) in training; None at inference


class ElasticCompressor(nn.Module):
    """The candidates (prune/pool/conv at each ratio, the resampler) and the gate choosing one per image."""

    def __init__(self, hidden: int, num_heads: int, kv_bias: bool, ratios: tuple[int, ...], num_q: int,
                 gate_hidden: int):
        super().__init__()
        self.candidates = [(p, r) for p in ("prune", "pool", "conv") for r in ratios] + [("resampler", num_q)]
        self.prune = Prune(hidden)
        self.conv = nn.ModuleDict({str(r): ConvCompressor(hidden, r) for r in ratios})
        self.resampler = VisionAdaptor(hidden, num_heads, num_q, kv_bias)
        self.gate = Gate(hidden, gate_hidden, len(self.candidates))

    def labels(self) -> list[str]:
        return [f"{p}/{r}" for p, r in self.candidates]

    def run_candidate(self, index: int, image: torch.Tensor):
        primitive, ratio = self.candidates[index]
        if primitive == "prune":
            return self.prune(image, ratio)
        if primitive == "pool":
            return pool(image, ratio), None
        if primitive == "conv":
            return self.conv[str(ratio)](image), None
        return self.resampler(image), None

    def choose(self, image: torch.Tensor, text_mean: torch.Tensor, tau: float):
        """(candidate index, straight-through weight of the choice (value 1) in training, else None)."""
        logits = self.gate(image.mean(0), text_mean).float()
        if not self.training:
            return int(logits.argmax()), None
        weights = nn.functional.gumbel_softmax(logits, tau=tau, hard=True)
        index = int(weights.argmax())
        return index, weights[index]

    def forward(self, image: torch.Tensor, text_mean: torch.Tensor, forced: int | None = None,
                tau: float = 1.0) -> Compressed:
        """One image's embeddings [n, H] -> its compressed tokens; `forced`: a candidate index (no gate)."""
        index, weight = (forced, None) if forced is not None else self.choose(image, text_mean, tau)
        tokens, bias = self.run_candidate(index, image)
        if weight is not None:
            gate_bias = straight_through(weight).expand(tokens.shape[0])
            bias = gate_bias if bias is None else bias + gate_bias
        return Compressed(tokens, self.labels()[index], bias)


class SpecVLMDraft(DirectInputDraft):
    """EagleVLM's draft (input norm kept) + `compressor`; compressed rows enter the layer directly."""

    def __init__(self, text_config, published: dict | None, ratios: tuple[int, ...], num_q: int, gate_hidden: int):
        super().__init__(text_config, published, input_norm=True)
        kv_bias = self.layers[0].self_attn.k_proj.bias is not None  # as ViSpec's adaptor: biases on Qwen targets
        self.compressor = ElasticCompressor(self.config.hidden_size, self.config.num_attention_heads, kv_bias, ratios,
                                            num_q, gate_hidden)


def prompt_text_mean(input_embeds: torch.Tensor, prompt_length: int,
                     image_spans: list[tuple[int, int]]) -> torch.Tensor:
    """Mean of the prompt's non-image token embeddings (zeros if it has none): the gate's question."""
    text = torch.ones(prompt_length, dtype=torch.bool, device=input_embeds.device)
    for start, end in image_spans:
        text[start:end] = False
    if not text.any():
        return input_embeds.new_zeros(input_embeds.shape[-1])
    return input_embeds[:prompt_length][text].mean(0)


def compress_images(draft: SpecVLMDraft, input_embeds: torch.Tensor, prompt_length: int,
                    image_spans: list[tuple[int, int]], forced: int | None, tau: float) -> list[Compressed]:
    """Each image of the prompt compressed on its own (the gate runs per image unless `forced`)."""
    if not image_spans:
        return []
    text_mean = prompt_text_mean(input_embeds, prompt_length, image_spans) if forced is None else None
    return [draft.compressor(input_embeds[start:end], text_mean, forced, tau) for start, end in image_spans]


def forced_candidate(options, compressor: ElasticCompressor) -> int | None:
    """The candidate `primitive` / `ratio` force, None when the gate decides."""
    if not options.primitive:
        return None
    if options.primitive == "resampler":
        return len(compressor.candidates) - 1
    ratio = options.ratio or compressor.candidates[0][1]
    return compressor.candidates.index((options.primitive, ratio))


@dataclass
class SpecVLMOptions(Eagle2Options):
    ratios: str = "4,16"  # compression ratios r: prune, pool and conv at each (ceil(n/r) tokens per image)
    primitive: Literal["", "prune", "pool", "conv", "resampler"] = ""  # "" = the gate decides per image
    ratio: int = 0  # with a forced prune/pool/conv: its ratio, one of `ratios` (0 = the first)
    num_q: int = 2  # resampler queries = its compressed tokens per image
    gate_hidden: int = 256  # the gate MLP's hidden width
    tau: float = 1.0  # training: Gumbel-softmax temperature of the gate


class SpecVLMProposer(SplicedProposer):
    draft_visual_tokens = 0
    draft_compression = ""

    def prefill_pairs(self, prompt, prefill, first_token):
        self.prompt_features = self.prompt_direct = None
        self.draft_visual_tokens, self.draft_compression = 0, ""
        if not prompt.image_spans:  # text-only: EagleVLM's pairs, no gate
            return super().prefill_pairs(prompt, prefill, first_token)
        first = self.embed(torch.tensor([first_token], device=self.device))
        compressed = compress_images(self.draft, prefill.input_embeds, prefill.input_embeds.shape[0],
                                     prompt.image_spans, forced_candidate(self.options, self.draft.compressor), 1.0)
        pairs = splice_compressed(prefill.hidden, torch.cat([prefill.input_embeds, first]), prompt.image_spans,
                                  [c.tokens for c in compressed])
        self.prompt_features, self.prompt_direct = pairs.features, pairs.direct
        self.draft_visual_tokens = pairs.num_direct  # counted on the host: no device read
        self.draft_compression = ",".join(c.label for c in compressed)
        return pairs.features, pairs.token_embeds, pairs.positions


class SpecVLMTrainer(SplicedTrainer):
    def draft_inputs(self, features):
        self._direct = self._key_bias = None
        if not features.image_spans:
            return super().draft_inputs(features)
        compressed = compress_images(self.draft, features.input_embeds, features.prompt_length, features.image_spans,
                                     forced_candidate(self.options, self.draft.compressor), self.options.tau)
        pairs = splice_compressed(features.hidden, features.input_embeds, features.image_spans,
                                  [c.tokens for c in compressed])
        self._direct = pairs.direct
        if any(c.key_bias is not None for c in compressed):
            flat = torch.cat([c.key_bias if c.key_bias is not None else c.tokens.new_zeros(c.tokens.shape[0])
                              for c in compressed])
            index = pairs.compressed_index
            self._key_bias = torch.where(index >= 0, flat[index.clamp(min=0)], flat.new_zeros(()))
        return pairs.features, pairs.token_embeds, pairs.positions, pairs.targets


SHAPE_OPTIONS = ("ratios", "num_q", "gate_hidden")  # options that shape the draft's parameters


class SpecVLM(EagleVLM):
    name = "specvlm"
    Options = SpecVLMOptions
    proposer_class = SpecVLMProposer
    compatible_checkpoints = ("eaglevlm",)  # the start of training: fc and layer from EagleVLM

    def build_draft(self, adapter, checkpoint=None) -> SpecVLMDraft:
        opts = self.options
        ratios = parse_ratios(opts.ratios)
        if opts.ratio and opts.primitive not in ("prune", "pool", "conv"):
            raise InputError(f"specvlm.ratio={opts.ratio} applies to a forced prune, pool or conv "
                             f"(specvlm.primitive=...), not to primitive={opts.primitive!r}")
        if opts.ratio and opts.ratio not in ratios:
            raise InputError(f"specvlm.ratio={opts.ratio} is not one of specvlm.ratios={opts.ratios}")
        if opts.num_q < 1 or opts.gate_hidden < 1 or opts.tau <= 0:
            raise InputError(f"specvlm needs num_q >= 1, gate_hidden >= 1 and tau > 0; got {opts.num_q}, "
                             f"{opts.gate_hidden}, {opts.tau}")
        return SpecVLMDraft(adapter.text_config, published_config(checkpoint), ratios, opts.num_q, opts.gate_hidden)

    def load_checkpoint(self, draft, checkpoint, source: str) -> None:
        state = dict(checkpoint.state_dict)
        set_token_map(draft, state.get(BUFFER))
        if checkpoint.config.get("method") == "eaglevlm":
            # Training's start: EagleVLM's fc and layer; the compressor and the gate fresh.
            state = {**{k: v for k, v in draft.state_dict().items() if k.startswith("compressor.")}, **state}
        else:
            saved = checkpoint.config.get("options") or {}
            for key in SHAPE_OPTIONS:
                normal = parse_ratios if key == "ratios" else int
                if key in saved and normal(saved[key]) != normal(getattr(self.options, key)):
                    raise DraftCheckpointError(f"{self.name} checkpoint {source} was trained with {key}={saved[key]}: "
                                               f"pass --method-args {self.name}.{key}={saved[key]}")
        load_matching(draft, state, f"{self.name} checkpoint {source}", ignore_prefixes=self.ignored_checkpoint_keys)

    def make_trainer(self, draft, lm_head):
        return SpecVLMTrainer(draft, lm_head, self.options)
