"""Resolve `--model`: a registered name (tiny-llava, ...), a local checkpoint directory, or a hub id."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vispec_bench.errors import InputError, UserError
from vispec_bench.models.families import FAMILIES
from vispec_bench.plugins.registry import MODELS, RegistryError

# model_type in config.json -> the HF class that runs it (vispec_bench.models.families says how each is
# tested). Text-only families are for sanity runs.
SUPPORTED_MODEL_TYPES = {family.model_type: family.hf_class for family in FAMILIES}


class ModelLoadError(UserError, RuntimeError):
    pass


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object  # an HF processor (VLMs) or a tokenizer (text-only models)
    name: str
    source: str  # "registry", "local" or "hub"
    # Drafts the model ships: draft kind (the method whose checkpoint it is, e.g. "eagle2") ->
    # checkpoint directory. A draft method given no `draft` option takes the one of its kind.
    default_drafts: dict[str, str] = field(default_factory=dict)


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise InputError(f"--dtype must be one of auto, {', '.join(table)}; got {name!r}")
    return table[name]


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name} was asked for, but torch sees no CUDA device (torch {torch.__version__})")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"--device must be auto, cpu or cuda[:N]; got {name!r}")
    return name


def load_model(name: str, dtype: torch.dtype, device: str, seed: int = 0,
               builder_options: dict | None = None) -> LoadedModel:
    """`builder_options`: keyword arguments for a registered model's builder (e.g. the testbed's
    `weights_dir`, which `testbed build` points at its work directory)."""
    if name in MODELS:
        return _build_registered(name, MODELS.load(name), dtype, device, seed, builder_options or {})
    if builder_options:
        raise ModelLoadError(f"builder options {sorted(builder_options)} were given for model {name!r}, "
                             "which is not a registered model: only registered builders take options")
    if os.path.isdir(name):
        return _load_pretrained(name, dtype, device, source="local")
    if _looks_like_hub_id(name):
        return _load_pretrained(name, dtype, device, source="hub")
    if name.startswith((".", "/", "~")) or os.path.sep in name:
        raise ModelLoadError(f"model directory {name!r} does not exist")
    try:
        MODELS.get(name)  # raises with a "did you mean"
    except RegistryError as err:
        raise ModelLoadError(f"{err} It is not a local directory either, nor a hub id of the form 'org/name'.") from None
    raise AssertionError("unreachable: a registered name returned above")


def _build_registered(name: str, builder, dtype, device, seed, options: dict) -> LoadedModel:
    """A registered builder returns (model, processor), or (model, processor, default_drafts)
    when the model ships drafts (see LoadedModel.default_drafts)."""
    built = builder(dtype=dtype, device=device, seed=seed, **options)
    if not isinstance(built, (tuple, list)) or len(built) not in (2, 3):
        found = f"{len(built)} values" if isinstance(built, (tuple, list)) else type(built).__name__
        raise ModelLoadError(f"the builder of model {name!r} returned {found}; expected (model, processor) "
                             "or (model, processor, default_drafts)")
    model, processor, *rest = built
    default_drafts = dict(rest[0]) if rest else {}
    return LoadedModel(model, processor, name, "registry", default_drafts)


def shipped_drafts(root: Path) -> dict[str, str]:
    """Draft kind -> checkpoint directory for every draft under `root` (one sub-directory each).
    The kind is what the checkpoint itself says (its draft_config.json "method"), so a model
    that ships drafts needs no table of method names. A folder named <kind>-<variant> (a draft
    trained for an ablation, e.g. vispec-noadaptor) is keyed by its folder name instead: the
    ablation of that name takes it, the method itself does not."""
    from vispec_bench.drafts.checkpoints import CONFIG, WEIGHTS

    found: dict[str, str] = {}
    for config_path in sorted(Path(root).glob(f"*/{CONFIG}")):
        directory = config_path.parent
        if not (directory / WEIGHTS).exists():
            continue
        kind = json.loads(config_path.read_text()).get("method")
        if not kind:
            raise ModelLoadError(f"{config_path} names no \"method\": cannot tell which method's draft it is")
        key = directory.name if directory.name.startswith(f"{kind}-") else kind
        if key in found:
            raise ModelLoadError(f"two default {key} drafts under {root}: {found[key]} and {directory}")
        found[key] = str(directory)
    return found


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def _load_pretrained(name: str, dtype: torch.dtype, device: str, source: str) -> LoadedModel:
    import transformers

    if source == "local" and not os.path.isfile(os.path.join(name, "config.json")):
        raise ModelLoadError(f"cannot load model {name!r}: this directory has no config.json "
                             "(expected a checkpoint saved with save_pretrained)")
    try:
        config = transformers.AutoConfig.from_pretrained(name)
    except OSError as err:
        where = "this directory has no config.json" if source == "local" else \
            "it is not in the local HF cache and the hub could not be reached, or it is a gated repository " \
            "you have not been granted (Gemma: accept its license on the hub, then `huggingface-cli login`); " \
            f"download it first (`huggingface-cli download {name}`) or pass a local directory"
        raise ModelLoadError(f"cannot load model {name!r}: {where}. Underlying error: {err}") from None
    class_name = SUPPORTED_MODEL_TYPES.get(config.model_type)
    if class_name is None:
        raise ModelLoadError(f"model {name!r} has model_type {config.model_type!r}; supported: "
                             f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}")
    model_class = getattr(transformers, class_name)
    if class_name == "AutoModelForCausalLM":
        processor = transformers.AutoTokenizer.from_pretrained(name)
    else:  # before the weights: a processor that cannot load fails in seconds
        processor = _load_vlm_processor(name, transformers)
    model = model_class.from_pretrained(name, dtype=dtype).to(device).eval()
    return LoadedModel(model, processor, name, source)


def _load_vlm_processor(name: str, transformers):
    """HF's own processor of a VLM checkpoint. A missing optional package (the Qwen-VL, SmolVLM and
    LLaVA-OneVision processors load a video processor, which needs torchvision; SmolVLM's needs
    num2words; on transformers 5.17 Idefics3's and SmolVLM's image processors need torchvision too),
    or a processor without an image processor, is a ModelLoadError that says what to do."""
    try:
        processor = transformers.AutoProcessor.from_pretrained(name)
    except (ImportError, OSError, AttributeError, ValueError) as err:
        message = " ".join(str(err).split())
        # transformers 5.17 raises ValueError("Missing optional dependencies ...") where later ones raise ImportError
        if isinstance(err, ImportError) or "Missing optional dependencies" in message:
            hint = (f"install torchvision (the build matching the installed torch {torch.__version__}: "
                    "https://pytorch.org/get-started/locally/)" if "torchvision" in message.lower()
                    else "install the package it names")
            raise ModelLoadError(f"cannot load the processor of model {name!r}: HF's processor needs a package this "
                                 f"environment lacks ({message}); {hint}") from None
        # e.g. a checkpoint saved without its processor files, or a tokenizer lacking the named
        # special tokens its processor reads (Gemma 3's boi_token / image_token)
        raise ModelLoadError(f"model {name!r}: its processor did not load (transformers {transformers.__version__}): "
                             f"{type(err).__name__}: {message}") from None
    if getattr(processor, "image_processor", None) is None:
        raise ModelLoadError(f"AutoProcessor gave a {type(processor).__name__} without an image processor for the "
                             f"VLM {name!r}: its processor_config.json / tokenizer_config.json name no processor "
                             "class this transformers knows; save the checkpoint's processor with save_pretrained "
                             "from HF's processor class")
    return processor
