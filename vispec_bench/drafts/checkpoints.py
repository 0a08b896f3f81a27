"""Draft checkpoints: `draft.safetensors` + `draft_config.json` naming the method and its target.

Loading also accepts the layouts the EAGLE and ViSpec authors publish (a directory with
`config.json` and `pytorch_model.bin` or `model.safetensors`, keys fc.*, layers.0.*, ...):
those carry no target description, so only the tensor shapes can be checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from vispec_bench.errors import UserError

WEIGHTS, CONFIG = "draft.safetensors", "draft_config.json"


class DraftCheckpointError(UserError, ValueError):
    pass


@dataclass
class DraftCheckpoint:
    state_dict: dict[str, torch.Tensor]
    config: dict  # {"method", "options", "target": {...}, "training": {...}}; {} for foreign layouts
    layout: str  # "vispec-bench" or "published"


def target_signature(adapter) -> dict:
    text = adapter.text_config
    return {"model_type": getattr(text, "model_type", None), "hidden_size": adapter.hidden_size,
            "vocab_size": adapter.vocab_size, "num_hidden_layers": getattr(text, "num_hidden_layers", None),
            "name_or_path": getattr(adapter.model, "name_or_path", None) or getattr(adapter.config, "_name_or_path", "")}


def save_draft(directory: Path, state_dict: dict[str, torch.Tensor], config: dict, dtype=None) -> None:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach())
               .contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(directory / (WEIGHTS + ".tmp")))
    (directory / (WEIGHTS + ".tmp")).replace(directory / WEIGHTS)
    (directory / (CONFIG + ".tmp")).write_text(json.dumps(config, indent=2, default=str) + "\n")
    (directory / (CONFIG + ".tmp")).replace(directory / CONFIG)


def load_draft(path: str | Path) -> DraftCheckpoint:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise DraftCheckpointError(f"draft checkpoint {str(path)!r} does not exist (train one with "
                                   "`python -m vispec_bench train`, or pass draft=random for a smoke test)")
    if path.is_file():
        path = path.parent
    if (path / WEIGHTS).exists():
        return DraftCheckpoint(load_file(str(path / WEIGHTS)), json.loads((path / CONFIG).read_text()), "vispec-bench")
    if (path / "model.safetensors").exists():
        return DraftCheckpoint(load_file(str(path / "model.safetensors")), _published_config(path), "published")
    if (path / "pytorch_model.bin").exists():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return DraftCheckpoint(state, _published_config(path), "published")
    found = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
    raise DraftCheckpointError(f"{path} holds no draft weights: expected {WEIGHTS}, model.safetensors or "
                               f"pytorch_model.bin; found {found}")


def _published_config(path: Path) -> dict:
    config_path = path / "config.json"
    return {"published_config": json.loads(config_path.read_text())} if config_path.exists() else {}


def check_target(checkpoint: DraftCheckpoint, adapter, method: str, compatible: tuple[str, ...] = ()) -> None:
    """A draft trained for another target, or for a method whose draft differs, must not load silently."""
    saved_method = checkpoint.config.get("method")
    if saved_method is not None and saved_method not in (method, *compatible):
        raise DraftCheckpointError(f"this checkpoint is a {saved_method!r} draft, not a {method!r} draft")
    target = checkpoint.config.get("target")
    if not target:
        return
    here = target_signature(adapter)
    for key in ("hidden_size", "vocab_size"):
        if target.get(key) != here[key]:
            raise DraftCheckpointError(
                f"the {method} draft was trained for a target with {key}={target.get(key)} "
                f"({target.get('name_or_path') or 'unnamed'}), but this target has {key}={here[key]}")


def load_matching(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str,
                  ignore_prefixes: tuple[str, ...] = ()) -> None:
    """load_state_dict with messages that name missing, unexpected and mis-shaped keys."""
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(ignore_prefixes)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs draft {tuple(own[k].shape)}"
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:4]))
        raise DraftCheckpointError(f"{what} does not fit this draft: " + ", ".join(parts))
    module.load_state_dict(state_dict)
