"""Lazy registries of methods, suites and models, filled the same way for built-ins and plug-ins.

An entry maps a name to a "module:attribute" string; nothing is imported until the entry is
loaded, so `python -m vispec_bench list` never imports torch (lm-evaluation-harness style).

Where entries come from, in this order, through one function (`Registry._fill`):
1. the built-in package's declaration module (`methods/entries.py`, `suites/entries.py`,
   `vispec_bench/models/entries.py`): torch-free lists of `Entry`, read from the source tree, so
   a checkout that is not pip-installed (or whose installed metadata is stale) has them all;
2. the entry points of installed distributions, group `vispec_bench.methods`, `vispec_bench.suites`
   or `vispec_bench.models`: `name = "module:attribute"` in the plug-in's pyproject.toml.

A plug-in never leaves the registry half-filled:
- a name that is already taken keeps its first registration (built-ins come first); the clash
  is a problem reported on stderr and by `list`;
- a plug-in whose module cannot be found is registered as broken: reported the same way, and
  using its name raises a `PluginError` that names the distribution. A module that is found but
  fails while importing is only seen when it is loaded (listing imports nothing): using the name
  raises the same `PluginError` with the import error chained; `list --check` imports every
  entry to find these.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from importlib import metadata

from vispec_bench.errors import UserError

# Where each kind's built-ins are declared; the modules hold `ENTRIES`, a list of `Entry`.
BUILTIN_DECLARATIONS = {"method": "methods.entries", "suite": "suites.entries", "model": "vispec_bench.models.entries"}


class RegistryError(UserError, KeyError):
    """An unknown or duplicate registry name. str() is the full message (KeyError quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PluginError(RegistryError):
    """A plug-in's entry that cannot be loaded; the message names the distribution."""


@dataclass(frozen=True)
class Entry:
    """One registered name. Declared with keywords, so new fields can be added with defaults."""

    name: str
    target: str  # "package.module:attribute"
    summary: str = ""
    aliases: tuple[str, ...] = ()
    source: str = "builtin"  # "builtin" or "plugin <distribution> <version>"
    error: str | None = None  # set when the plug-in is known to be broken (its module is missing)
    preset: dict = field(default_factory=dict, hash=False, compare=False)  # options this entry sets (methods), under the user's
    ablation_of: str | None = None  # the method this entry ablates: `run --ablations` adds it to that method

    def load(self):
        if self.error is not None:
            raise PluginError(f"{self.name!r} comes from {self.source} ({self.target}), which is broken: {self.error}")
        module_name, _, attribute = self.target.partition(":")
        if not attribute:
            raise RegistryError(f"entry {self.name!r} must be 'module:attribute', got {self.target!r}")
        if self.source == "builtin":
            module = importlib.import_module(module_name)  # a built-in that fails to import is a bug: traceback
        else:
            try:
                module = importlib.import_module(module_name)
            except Exception as err:
                raise PluginError(f"{self.name!r} comes from {self.source}, whose module {module_name} failed to "
                                  f"import: {type(err).__name__}: {err}") from err
        try:
            return getattr(module, attribute)
        except AttributeError:
            raise RegistryError(f"entry {self.name!r} ({self.source}) points to {self.target!r}, but {module_name} "
                                f"has no {attribute!r}") from None


def _module_is_findable(module_name: str) -> bool:
    """Whether the module's top-level package can be found, without executing any of its code."""
    top = module_name.partition(".")[0]
    try:
        return top in sys.modules or importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class Registry:
    kind: str  # "method", "suite", "model": used in messages and in the entry-point group name
    _entries: dict[str, Entry] = field(default_factory=dict)
    _aliases: dict[str, str] = field(default_factory=dict)
    _filled: bool = False
    problems: list[str] = field(default_factory=list)  # duplicate names and broken plug-ins, for `list`

    @property
    def entry_point_group(self) -> str:
        return f"vispec_bench.{self.kind}s"

    def register(self, name: str, target: str, summary: str = "", aliases: tuple[str, ...] = (),
                 source: str = "builtin", **fields) -> Entry:
        """Add one entry; raises RegistryError if the name or an alias is taken (nothing is added then).
        Extra keyword `fields` go to `Entry` (fields added to it later)."""
        return self._add(Entry(name, target, summary, tuple(aliases), source, **fields))

    def _add(self, entry: Entry) -> Entry:
        for key in (entry.name, *entry.aliases):
            if key in self._entries or key in self._aliases:
                existing = self._resolve(key)
                raise RegistryError(
                    f"duplicate {self.kind} name {key!r}: already registered by {existing.source} "
                    f"as {existing.target!r}, now again by {entry.source} as {entry.target!r}"
                )
        self._entries[entry.name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = entry.name
        return entry

    def _resolve(self, name: str) -> Entry:
        return self._entries[self._aliases.get(name, name)]

    def _declared_entries(self) -> list[Entry]:
        """Built-in declarations first, then every installed plug-in's entry points."""
        declared = []
        builtin_module = BUILTIN_DECLARATIONS.get(self.kind)
        if builtin_module is not None:
            declared += importlib.import_module(builtin_module).ENTRIES
        for ep in sorted(metadata.entry_points(group=self.entry_point_group),
                         key=lambda ep: (ep.dist.name if ep.dist is not None else "", ep.name)):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an unknown distribution"
            module_name, colon, attribute = ep.value.partition(":")
            error = None
            if not colon or not attribute.strip():
                error = f"entry point value {ep.value!r} is not 'module:attribute'"
            elif not _module_is_findable(module_name):
                error = f"module {module_name!r} is not installed (ModuleNotFoundError)"
            declared.append(Entry(ep.name, ep.value.strip(), source=f"plugin {dist}", error=error))
        return declared

    def _fill(self) -> None:
        """Register every declared entry; one bad plug-in entry is reported, never fatal."""
        if self._filled:
            return
        for entry in self._declared_entries():
            try:
                self._add(entry)
            except RegistryError as clash:
                self.problems.append(f"{clash}; the first registration is kept")
                continue
            if entry.error is not None:
                self.problems.append(f"{self.kind} {entry.name!r} from {entry.source} is broken: {entry.error}")
        self._filled = True  # only once complete: an exception above leaves it to be retried
        for problem in self.problems:
            print(f"vispec-bench: warning: {problem}", file=sys.stderr)

    def names(self) -> list[str]:
        self._fill()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        self._fill()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: str) -> bool:
        self._fill()
        return name in self._entries or name in self._aliases

    def get(self, name: str) -> Entry:
        self._fill()
        if name in self:
            return self._resolve(name)
        candidates = list(self._entries) + list(self._aliases)
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise RegistryError(
            f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(self.names())}."
        )

    def load(self, name: str):
        return self.get(name).load()

    def check(self) -> list[str]:
        """Import every entry (torch included): the problems found, plus those of filling."""
        self._fill()
        failures = []
        for entry in self.entries():
            if entry.error is not None:
                continue  # already among self.problems
            try:
                entry.load()
            except RegistryError as err:
                failures.append(str(err))
        return self.problems + failures

    def ablations_of(self, names: list[str]) -> list[str]:
        """Every registered ablation of the given entries, in name order."""
        return [entry.name for entry in self.entries() if entry.ablation_of is not None and entry.ablation_of in names]


METHODS = Registry("method")
SUITES = Registry("suite")
MODELS = Registry("model")

