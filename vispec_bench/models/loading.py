"""Resolve `--model`: a registered name (tiny-llava, ...), a local checkpoint directory, or a hub id."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from vispec_bench.errors import InputError, UserError
from vispec_bench.plugins.registry import MODELS, RegistryError

# model_type in config.json -> the HF class that runs it. Text-only families are for sanity runs.
SUPPORTED_MODEL_TYPES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "llama": "AutoModelForCausalLM",
    "qwen2": "AutoModelForCausalLM",
}


class ModelLoadError(UserError, RuntimeError):
    pass


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object  # an HF processor (VLMs) or a tokenizer (text-only models)
    name: str
    source: str  # "registry", "local" or "hub"


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


def load_model(name: str, dtype: torch.dtype, device: str, seed: int = 0) -> LoadedModel:
    if name in MODELS:
        builder = MODELS.load(name)
        model, processor = builder(dtype=dtype, device=device, seed=seed)
        return LoadedModel(model, processor, name, "registry")
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
            "it is not in the local HF cache and the hub could not be reached (download it first: " \
            f"`huggingface-cli download {name}`, or pass a local directory)"
        raise ModelLoadError(f"cannot load model {name!r}: {where}. Underlying error: {err}") from None
    class_name = SUPPORTED_MODEL_TYPES.get(config.model_type)
    if class_name is None:
        raise ModelLoadError(f"model {name!r} has model_type {config.model_type!r}; supported: "
                             f"{', '.join(sorted(SUPPORTED_MODEL_TYPES))}")
    model_class = getattr(transformers, class_name)
    model = model_class.from_pretrained(name, dtype=dtype).to(device).eval()
    if class_name == "AutoModelForCausalLM":
        processor = transformers.AutoTokenizer.from_pretrained(name)
    else:
        processor = transformers.AutoProcessor.from_pretrained(name)
    return LoadedModel(model, processor, name, source)
