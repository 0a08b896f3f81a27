"""Draft checkpoints: `draft.safetensors` + `draft_config.json` naming the method and its target.

Loading also accepts the layouts the authors publish (a directory, or a hub id in the local
Hugging Face cache; see vispec_bench.drafts.published):
- EAGLE / EAGLE-2 and the ViSpec repo's baselines: `config.json` + `pytorch_model.bin` or
  `model.safetensors` (keys fc.*, layers.0.*, optionally embed_tokens.weight; the ViSpec repo's
  Medusa baseline: medusa_head.{i}.0.linear.*);
- Medusa: `medusa_lm_head.pt` (keys {i}.0.linear.*, {i}.1.weight: a vocabulary projection per
  head) or `medusa_lm_head.safetensors` (ResBlocks only: the heads share the target's lm_head);
- EAGLE-3 (SafeAILab): config.json with `draft_vocab_size` + fc, midlayer.*, norm, lm_head, d2t, t2d;
- the speculators layout (vllm-project/speculators, `eagle` and `eagle3`), translated to the
  names above (vispec_bench.drafts.speculators_layout).
These carry no target description; `check_published` checks hidden size and vocabulary from
their config.json and tensor shapes instead (and a speculators draft's verifier architecture and
feature layers), and refuses full-model checkpoints.
"""

from __future__ import annotations

import json
import re
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
    file: str = ""  # the weights file it was read from


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


PUBLISHED_FILES = ("model.safetensors", "pytorch_model.bin", "medusa_lm_head.safetensors", "medusa_lm_head.pt")


def draft_weights_file(path: Path) -> Path:
    """The file load_draft reads for a draft `path` (its directory, or a file in that directory):
    ours first, then the published layouts in PUBLISHED_FILES order. Provenance hashes this file."""
    if not path.exists():
        raise DraftCheckpointError(f"draft checkpoint {str(path)!r} does not exist (train one with "
                                   "`python -m vispec_bench train`, or pass draft=random for a smoke test)")
    directory = path.parent if path.is_file() else path
    for name in (WEIGHTS, *PUBLISHED_FILES):
        if (directory / name).exists():
            return directory / name
    found = ", ".join(sorted(p.name for p in directory.iterdir())[:10]) or "nothing"
    raise DraftCheckpointError(f"{directory} holds no draft weights: expected {WEIGHTS} or one of "
                               f"{', '.join(PUBLISHED_FILES)}; found {found}")


def load_draft(path: str | Path) -> DraftCheckpoint:
    from safetensors.torch import load_file

    from vispec_bench.drafts.published import interpret_published, read_published_config, resolve_draft_source

    weights = draft_weights_file(resolve_draft_source(path))
    if weights.name == WEIGHTS:
        return DraftCheckpoint(load_file(str(weights)), json.loads((weights.parent / CONFIG).read_text()),
                               "vispec-bench", WEIGHTS)
    state = (load_file(str(weights)) if weights.suffix == ".safetensors"
             else torch.load(weights, map_location="cpu", weights_only=True))
    state, published, method = interpret_published(state, read_published_config(weights.parent),
                                                   f"draft {weights.parent} ({weights.name})")
    config = {"published_config": published} if method is None else {"published_config": published, "method": method}
    return DraftCheckpoint(state, config, "published", weights.name)


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


def trained_for(checkpoint: DraftCheckpoint) -> str | None:
    """The target name the draft's config records (ours only; published layouts name none)."""
    return (checkpoint.config.get("target") or {}).get("name_or_path") or None


def same_model_name(a: str, b: str) -> bool:
    """Whether two model names plausibly mean one model: equal, or the same last path component
    (a hub id "org/model" and a local copy ".../model" of it)."""
    def last(name: str) -> str:
        return name.rstrip("/").rsplit("/", 1)[-1].lower()
    return a == b or last(a) == last(b)


def target_name_warning(checkpoint: DraftCheckpoint, adapter, method: str) -> str | None:
    """A warning when the draft names another target than this one. Not an error: check_target has
    already found the shapes compatible, and a draft may well serve a sibling model; but it was not
    trained on this target's features (the testbed's 64- and 576-token settings share SmolLM2, so a
    draft of one loads on the other without a shape mismatch), so its acceptance measures something else."""
    name, here = trained_for(checkpoint), target_signature(adapter)["name_or_path"]
    if not name or not here or same_model_name(name, here):
        return None
    return (f"the {method} draft was trained for {name!r}, but this target is {here!r}: its acceptance "
            "here measures a draft of another model (the run records `trained_for`)")


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


# Keys only a whole model (target + draft, or a base model) has: a draft directory never does.
FULL_MODEL_MARKERS = ("model.layers.", "language_model.", "lm_head.weight", "model.embed_tokens.", "vision_tower.",
                      "visual.", "layers.1.", "base_model.")


def refuse_full_model(checkpoint: DraftCheckpoint, what: str) -> None:
    # An EAGLE-3 draft has its own lm_head (over its reduced vocabulary).
    own_head = checkpoint.config.get("method") == "eagle3"
    markers = [m for m in FULL_MODEL_MARKERS if not (own_head and m == "lm_head.weight")]
    full = sorted({m for m in markers for key in checkpoint.state_dict if key.startswith(m)})
    if full:
        raise DraftCheckpointError(f"{what} looks like a full model checkpoint, not a draft (keys starting with "
                                   f"{', '.join(full)}): pass the directory of the draft alone")


def check_published(checkpoint: DraftCheckpoint, adapter, what: str, hidden_size: int | None = None,
                    vocab_size: int | None = None) -> None:
    """Hidden size and vocabulary of a published draft against the target, from its config.json,
    its embed_tokens copy (if any) and the shapes the caller read (`hidden_size`, `vocab_size`).
    Raises on a mismatch, and when the vocabulary cannot be known (a full-model checkpoint was
    refused before: refuse_full_model, called for every published layout by the loader)."""
    state, config = checkpoint.state_dict, checkpoint.config.get("published_config", {})
    check_verifier(config, adapter, what)
    embed, t2d = state.get("embed_tokens.weight"), state.get("t2d")
    sources = {"hidden_size": [("config.json", config.get("hidden_size")), ("its tensors", hidden_size),
                               ("embed_tokens", None if embed is None else embed.shape[1])],
               "vocab_size": [("config.json", config.get("vocab_size")), ("its tensors", vocab_size),
                              ("embed_tokens", None if embed is None else embed.shape[0]),
                              ("t2d", None if t2d is None else t2d.shape[0])]}
    here = {"hidden_size": adapter.hidden_size, "vocab_size": adapter.vocab_size}
    for key, found in sources.items():
        known = [(where, value) for where, value in found if value is not None]
        if not known:
            raise DraftCheckpointError(f"{what}: cannot check its {key} against the target ({here[key]}): "
                                       "its config.json has none and no tensor shows it")
        for where, value in known:
            if int(value) != here[key]:
                raise DraftCheckpointError(f"{what} was made for a target with {key}={value} ({where}), "
                                           f"but this target has {key}={here[key]}")


def check_verifier(config: dict, adapter, what: str) -> None:
    """A speculators draft names the verifier it was trained for: a target of another architecture
    (another family, or a text model for a VLM) is refused even where the shapes happen to agree,
    and so is a target without the decoder layers whose inputs an eagle3 draft reads."""
    layer_ids = config.get("eagle_aux_hidden_state_layer_ids") or []
    num_layers = adapter.text_config.num_hidden_layers
    if any(not 0 <= int(i) < num_layers for i in layer_ids):
        raise DraftCheckpointError(f"{what} reads the inputs of the target's decoder layers {list(layer_ids)} "
                                   f"(eagle_aux_hidden_state_layer_ids), but this target has {num_layers} layers")
    expected = config.get("verifier_architectures") or []
    if not expected:
        return
    here = {type(adapter.model).__name__, *(getattr(adapter.config, "architectures", None) or [])}
    if not here & set(expected):
        raise DraftCheckpointError(
            f"{what} was trained for a {'/'.join(expected)} verifier "
            f"({config.get('verifier_name_or_path') or 'unnamed'}), "
            f"but this target is a {type(adapter.model).__name__}")


MEDUSA_KEY = re.compile(r"^(\d+)\.(\d+)\.(linear\.weight|linear\.bias|weight)$")


def medusa_published_state(checkpoint: DraftCheckpoint, what: str) -> tuple[dict[str, torch.Tensor], int, bool]:
    """A published Medusa file mapped onto MedusaHeads' names: (state dict, number of heads, shared lm_head).

    `medusa_lm_head.pt`: {i}.0.linear.{weight,bias} (head i's ResBlock) and {i}.1.weight (its own
    vocabulary projection); `medusa_lm_head.safetensors` and the ViSpec repo's Medusa baseline
    (keys under medusa_head.): ResBlocks only, projected by the target's lm_head.
    """
    state = {k.removeprefix("module."): v for k, v in checkpoint.state_dict.items() if not k.startswith("embed_tokens.")}
    state = {k.removeprefix("medusa_head."): v for k, v in state.items()}
    mapped, unknown, deeper = {}, [], []
    for key, value in state.items():
        match = MEDUSA_KEY.match(key)
        if not match:
            unknown.append(key)
        elif match[2] == "0" and match[3] != "weight":
            mapped[f"blocks.{match[1]}.{match[3]}"] = value
        elif match[2] == "1" and match[3] == "weight":
            mapped[f"projections.{match[1]}.weight"] = value
        else:
            deeper.append(key)
    if unknown:
        raise DraftCheckpointError(f"{what} is not a Medusa head file: unexpected keys {sorted(unknown)[:6]} "
                                   "(expected {i}.0.linear.weight, {i}.0.linear.bias and optionally {i}.1.weight)")
    if deeper:
        raise DraftCheckpointError(f"{what} has more than one ResBlock per head ({sorted(deeper)[:3]}); "
                                   "this package's Medusa heads have one (medusa_num_layers=1, as published)")
    heads = sorted({int(k.split(".")[1]) for k in mapped})
    projections = sorted({int(k.split(".")[1]) for k in mapped if k.startswith("projections.")})
    if not heads or heads != list(range(len(heads))) or projections not in ([], heads):
        raise DraftCheckpointError(f"{what}: heads {heads}, vocabulary projections for heads {projections}: "
                                   "expected heads 0..K-1, all with or all without a projection")
    return mapped, len(heads), not projections
