"""Methods: a name, an options dataclass with the defaults next to the method, and a proposer.

Options are set from the CLI as `--method-args NAME.KEY=VALUE`; values are converted with the
dataclass field's type, booleans strictly (argparse's `type=bool` would make "False" true).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import sys
import typing
from dataclasses import dataclass

import torch

from vispec_bench.errors import InputError
from vispec_bench.engine.adapter import TargetAdapter
from vispec_bench.engine.proposer import Proposer


@dataclass
class NoOptions:
    pass


class Method:
    """The inference contract: one instance per run (options, `prepare`), a proposer per sample.
    Training a draft is a separate contract (vispec_bench/plugins/draft_training.py)."""

    name: str = ""
    Options: type = NoOptions
    lossless: bool = True  # False only for options that change the output distribution (e.g. typical acceptance)
    preset: dict = {}  # options a registry entry sets (an ablation), under the user's --method-args
    # {"path", "weights", "sha256", "source"} of the draft this run loads, if any, and once loaded
    # "trained_for": the target its config names (None for published layouts)
    resolved_draft: dict | None = None

    def __init__(self, options=None):
        self.options = options if options is not None else self.Options()

    def resolve(self, default_drafts: dict[str, str]) -> None:
        """Called once the target is known and before the config hash is taken: settle every
        choice that depends on the model (a draft method takes the model's default draft)."""

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
        described = {"name": self.name, "class": f"{type(self).__module__}:{type(self).__qualname__}",
                     "lossless": self.is_lossless(), "options": dataclasses.asdict(self.options)}
        if self.preset:
            described["preset"] = dict(self.preset)
        if self.resolved_draft is not None:
            described["draft"] = dict(self.resolved_draft)
        return described

    def config_hash(self, engine: str = "eager") -> str:
        """Identifies the method's code path, options, draft and engine: records with different
        hashes are not comparable. A draft counts by its content (sha256), not by where this machine
        keeps it. The default engine (eager) adds nothing, so hashes from before engines existed hold."""
        described = self.describe()
        if "draft" in described:
            # the weights' sha256 identifies the draft; trained_for (the name its config records,
            # known only once loaded) is information about it, kept out so resumed runs match
            described["draft"] = {k: v for k, v in described["draft"].items() if k not in ("path", "trained_for")}
        if engine != "eager":
            described["engine"] = engine
        blob = json.dumps(described, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


@dataclass
class DraftOptions:
    """Options every method with a draft network takes; its own options dataclass inherits them."""

    draft: str = ""  # checkpoint directory; "random" = a seeded random draft (smoke tests); "" = the model's default
    seed: int = 0  # seeds the draft=random initialisation
    vocab: int = 0  # training: draft vocabulary size (0 = the target's); a checkpoint brings its own map


class DraftMethod(Method):
    """A method with a draft network (EAGLE-2, Medusa, ViSpec): the inference side.

    Options inherit DraftOptions. With no `draft` option, a model that ships drafts (the testbed)
    supplies the one of this method's kind. Loading checks the checkpoint against the target
    (hidden size, vocabulary) and its kind; `compatible_checkpoints` names other draft kinds whose
    checkpoints this method accepts. A method whose draft can be trained also implements
    vispec_bench.plugins.draft_training.DraftTraining.
    """

    Options: type = DraftOptions
    ignored_checkpoint_keys: tuple[str, ...] = ()  # keys a checkpoint may carry that the draft does not use
    compatible_checkpoints: tuple[str, ...] = ()
    shipped_draft_of: str = ""  # whose draft a model that ships drafts supplies (default: this method's own name)

    @property
    def draft_kind(self) -> str:
        """The kind of checkpoint this method loads and writes: its class's name, so an ablation
        registered under another name (a preset of the same class) takes the same drafts."""
        return type(self).name or self.name

    def build_draft(self, adapter, checkpoint=None):
        """The draft network, shaped for `checkpoint` (a DraftCheckpoint to load next, or None: a
        fresh draft for the target). Published layouts may dictate shapes their config.json gives."""
        raise NotImplementedError

    def randomize(self, draft) -> None:
        """Hook for draft=random, after the seeded build (inside the same RNG fork)."""

    def resolve(self, default_drafts: dict[str, str]) -> None:
        """The `draft` option if given, else the model's default draft: the one shipped under this
        method's own name (an ablation trained as itself), else the one of its kind."""
        from vispec_bench.drafts.provenance import draft_provenance

        requested = str(self.options.draft)
        if requested == "random":
            self.resolved_draft = {"path": None, "weights": None, "sha256": None, "source": "random"}
        elif requested:
            self.resolved_draft = draft_provenance(requested, source="option")
        elif (default := default_drafts.get(self.name) or default_drafts.get(self.draft_kind)
                         or default_drafts.get(self.shipped_draft_of)):
            self.resolved_draft = draft_provenance(default, source="model default")
        else:
            raise InputError(f"{self.name} needs a draft: --method-args {self.name}.draft=CHECKPOINT_DIR "
                             f"(see `python -m vispec_bench train`) or {self.name}.draft=random for a smoke test")

    def load_draft_network(self, adapter):
        """The draft resolve() chose, on the target's device and dtype, in eval mode."""
        from vispec_bench.drafts.checkpoints import (check_target, load_draft, refuse_full_model, target_name_warning,
                                                     trained_for)

        if self.resolved_draft is None:
            self.resolve({})  # prepared outside a run: the options alone decide
        source = self.resolved_draft["path"]
        checkpoint = None
        if source is not None:
            checkpoint = load_draft(source)
            check_target(checkpoint, adapter, self.draft_kind, self.compatible_checkpoints)
            self.resolved_draft["trained_for"] = trained_for(checkpoint)
            if (warning := target_name_warning(checkpoint, adapter, self.name)) is not None:
                print(f"vispec-bench: warning: {warning}", file=sys.stderr)
            if checkpoint.layout == "published":
                what = f"{self.name} draft {source} ({checkpoint.file})"
                refuse_full_model(checkpoint, what)  # first, for every method: before its own checks
                self.check_published(checkpoint, adapter, what)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.options.seed)
            draft = self.build_draft(adapter, checkpoint)
            if source is None:
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


@dataclass
class SampleContext:
    """What the runner knows about the sample beyond its prompt."""

    sample_id: str
    reference_ids: list[int] | None = None  # AR's ids for this sample (same run), used by the oracle


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def check_option_name(options_class: type, key: str) -> None:
    fields = [f.name for f in dataclasses.fields(options_class)]
    if key not in fields:
        close = difflib.get_close_matches(key, fields, n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        known = ", ".join(fields) or "(this method takes no options)"
        raise InputError(f"unknown option {key!r} for {options_class.__qualname__}.{hint} Known: {known}")


def convert_option(options_class: type, key: str, raw: str):
    check_option_name(options_class, key)
    hints = typing.get_type_hints(options_class)
    kind = hints[key]
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        allowed = typing.get_args(kind)
        if raw not in allowed:
            raise InputError(f"option {key} must be one of {', '.join(map(str, allowed))}; got {raw!r}")
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
        raise InputError(f"option {key} is a boolean: use true or false, got {raw!r}")
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise InputError(f"option {key} expects {getattr(kind, '__name__', kind)}, got {raw!r}") from None


def parse_method_args(items: list[str], method_names: list[str]) -> dict[str, dict[str, str]]:
    """["eagle2.depth=5", ...] -> {"eagle2": {"depth": "5"}}; names must be among the run's methods."""
    parsed: dict[str, dict[str, str]] = {}
    for item in items:
        name_key, sep, value = item.partition("=")
        name, dot, key = name_key.partition(".")
        if not sep or not dot or not key:
            raise InputError(f"--method-args expects METHOD.KEY=VALUE, got {item!r}")
        if name not in method_names:
            raise InputError(f"--method-args {item!r} names method {name!r}, which is not in this run "
                             f"(--methods {','.join(method_names)})")
        parsed.setdefault(name, {})[key] = value
    return parsed


def build_method(method_class: type, name: str, raw_options: dict[str, str], preset: dict | None = None) -> Method:
    """`preset`: typed option values a registry entry sets (an ablation); `raw_options` (the
    user's --method-args) override them."""
    preset = dict(preset or {})
    for key in preset:
        check_option_name(method_class.Options, key)
    values = {**preset, **{key: convert_option(method_class.Options, key, raw) for key, raw in raw_options.items()}}
    method = method_class(method_class.Options(**values))
    method.name = name
    method.preset = preset
    return method


def make_method(name: str, raw_options: dict[str, str]) -> Method:
    """The registered method `name` with its entry's preset, then the user's options."""
    from vispec_bench.plugins.registry import METHODS

    entry = METHODS.get(name)
    return build_method(entry.load(), name, raw_options, entry.preset)
