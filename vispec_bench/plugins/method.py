"""Methods: a name, an options dataclass with the defaults next to the method, and a proposer.

Options are set from the CLI as `--method-args NAME.KEY=VALUE`; values are converted with the
dataclass field's type, booleans strictly (ANCHORS.md mistake 6: `type=bool` makes "False" true).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import typing
from dataclasses import dataclass

import torch

from vispec_bench.engine.adapter import TargetAdapter
from vispec_bench.engine.proposer import Proposer


@dataclass
class NoOptions:
    pass


class Method:
    name: str = ""
    Options: type = NoOptions
    lossless: bool = True  # False only for options that change the output distribution (e.g. typical acceptance)

    def __init__(self, options=None):
        self.options = options if options is not None else self.Options()

    def prepare(self, adapter: TargetAdapter) -> None:
        """Called once per run after the target is loaded: build or load the draft network."""

    def is_lossless(self) -> bool:
        return self.lossless

    def make_proposer(self, adapter: TargetAdapter, context: "SampleContext") -> Proposer | None:
        """A fresh proposer for one sample; None means plain autoregressive decoding."""
        raise NotImplementedError

    def runtime_settings(self) -> dict | None:
        """Settings decided at prepare() time (e.g. a tree sized to the device), recorded with every record."""
        return None

    def describe(self) -> dict:
        return {"name": self.name, "class": f"{type(self).__module__}:{type(self).__qualname__}",
                "lossless": self.is_lossless(), "options": dataclasses.asdict(self.options)}

    def config_hash(self) -> str:
        """Identifies the method's code path and options: records with different hashes are not comparable."""
        blob = json.dumps(self.describe(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


class DraftMethod(Method):
    """A method with a trainable draft network (EAGLE-2, Medusa, ViSpec).

    Its options carry `draft` (a checkpoint directory, or "random" for a seeded random draft)
    and `seed`; with no `draft`, a model that ships drafts (the testbed) supplies its own. Loading checks the checkpoint against the target (hidden size, vocabulary) and
    the method; `compatible_checkpoints` names other methods whose drafts this one accepts.
    """

    ignored_checkpoint_keys: tuple[str, ...] = ()  # keys a checkpoint may carry that the draft does not use
    compatible_checkpoints: tuple[str, ...] = ()
    shipped_draft_of: str = ""  # whose draft a model that ships drafts supplies (default: this method's own name)

    def build_draft(self, adapter, checkpoint=None):
        """The draft network, shaped for `checkpoint` (a DraftCheckpoint to load next, or None: a
        fresh draft for the target). Published layouts may dictate shapes their config.json gives."""
        raise NotImplementedError

    def randomize(self, draft) -> None:
        """Hook for draft=random, after the seeded build (inside the same RNG fork)."""

    def make_trainer(self, draft, lm_head):
        raise NotImplementedError

    def load_draft_network(self, adapter):
        """The draft the options ask for, on the target's device and dtype, in eval mode."""
        from vispec_bench.drafts.checkpoints import check_target, load_draft

        shipped = getattr(adapter.model, "vispec_default_drafts", {})
        source = self.options.draft or shipped.get(self.name) or shipped.get(self.shipped_draft_of, "")
        if not source:
            raise ValueError(f"{self.name} needs a draft: --method-args {self.name}.draft=CHECKPOINT_DIR "
                             f"(see `python -m vispec_bench train`) or {self.name}.draft=random for a smoke test")
        checkpoint = None
        if source != "random":
            checkpoint = load_draft(source)
            check_target(checkpoint, adapter, self.name, self.compatible_checkpoints)
            if checkpoint.layout == "published":
                self.check_published(checkpoint, adapter, f"{self.name} draft {source} ({checkpoint.file})")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.options.seed)
            draft = self.build_draft(adapter, checkpoint)
            if source == "random":
                self.randomize(draft)
        if checkpoint is not None:
            self.load_checkpoint(draft, checkpoint, source=source)
        return draft.to(device=adapter.device, dtype=adapter.dtype).eval()

    def check_published(self, checkpoint, adapter, what: str) -> None:
        """A published draft (no target description): hidden size and vocabulary against the target."""
        from vispec_bench.drafts.checkpoints import check_published

        check_published(checkpoint, adapter, what)

    def load_checkpoint(self, draft, checkpoint, source: str) -> None:
        from vispec_bench.drafts.checkpoints import load_matching
        from vispec_bench.drafts.vocab import BUFFER, set_token_map

        # a reduced draft vocabulary is data that comes with the checkpoint, whatever the options say
        set_token_map(draft, checkpoint.state_dict.get(BUFFER))
        load_matching(draft, checkpoint.state_dict, f"{self.name} checkpoint {source}",
                      ignore_prefixes=self.ignored_checkpoint_keys)

    def fit_to_data(self, draft, answer_rows, adapter) -> None:
        """Before training from scratch: fit the reduced draft vocabulary (option `vocab`, 0 = full)."""
        from vispec_bench.drafts.vocab import frequent_tokens, set_token_map

        size = getattr(self.options, "vocab", 0)
        if size and size < adapter.vocab_size:
            set_token_map(draft, frequent_tokens(answer_rows, size, list(adapter.eos_token_ids)))

    def checkpoint_config(self, adapter) -> dict:
        from vispec_bench.drafts.checkpoints import target_signature

        return {"method": self.name, "options": vars(self.options).copy(), "target": target_signature(adapter)}


@dataclass
class SampleContext:
    """What the runner knows about the sample beyond its prompt."""

    sample_id: str
    reference_ids: list[int] | None = None  # AR's ids for this sample (same run), used by the oracle


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def convert_option(options_class: type, key: str, raw: str):
    fields = {f.name: f for f in dataclasses.fields(options_class)}
    if key not in fields:
        close = difflib.get_close_matches(key, list(fields), n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        known = ", ".join(fields) or "(this method takes no options)"
        raise ValueError(f"unknown option {key!r} for {options_class.__qualname__}.{hint} Known: {known}")
    hints = typing.get_type_hints(options_class)
    kind = hints[key]
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        allowed = typing.get_args(kind)
        if raw not in allowed:
            raise ValueError(f"option {key} must be one of {', '.join(map(str, allowed))}; got {raw!r}")
        return raw
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if raw.lower() in ("none", "null"):
            return None
        kind = args[0]
    if kind is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError(f"option {key} is a boolean: use true or false, got {raw!r}")
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ValueError(f"option {key} expects {getattr(kind, '__name__', kind)}, got {raw!r}") from None


def parse_method_args(items: list[str], method_names: list[str]) -> dict[str, dict[str, str]]:
    """["eagle2.depth=5", ...] -> {"eagle2": {"depth": "5"}}; names must be among the run's methods."""
    parsed: dict[str, dict[str, str]] = {}
    for item in items:
        name_key, sep, value = item.partition("=")
        name, dot, key = name_key.partition(".")
        if not sep or not dot or not key:
            raise ValueError(f"--method-args expects METHOD.KEY=VALUE, got {item!r}")
        if name not in method_names:
            raise ValueError(f"--method-args {item!r} names method {name!r}, which is not in this run "
                             f"(--methods {','.join(method_names)})")
        parsed.setdefault(name, {})[key] = value
    return parsed


def build_method(method_class: type, name: str, raw_options: dict[str, str]) -> Method:
    values = {key: convert_option(method_class.Options, key, raw) for key, raw in raw_options.items()}
    method = method_class(method_class.Options(**values))
    method.name = name
    return method
