"""Lazy registries of methods, suites and models.

An entry maps a name to a "module:attribute" string; nothing is imported until the entry is
loaded, so `python -m vispec_bench list` never imports torch (lm-evaluation-harness style).
Third-party packages add entries through the entry-point groups `vispec_bench.methods`,
`vispec_bench.suites` and `vispec_bench.models.loading`.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from importlib import metadata


class RegistryError(KeyError):
    """An unknown or duplicate registry name. str() is the full message (KeyError quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "package.module:attribute"
    summary: str = ""
    source: str = "builtin"

    def load(self):
        module_name, _, attribute = self.target.partition(":")
        if not attribute:
            raise RegistryError(f"entry {self.name!r} must be 'module:attribute', got {self.target!r}")
        module = importlib.import_module(module_name)
        try:
            return getattr(module, attribute)
        except AttributeError:
            raise RegistryError(
                f"entry {self.name!r} points to {self.target!r}, but {module_name} has no {attribute!r}"
            ) from None


@dataclass
class Registry:
    kind: str  # "method", "suite", "model": used in messages and in the entry-point group name
    _entries: dict[str, Entry] = field(default_factory=dict)
    _aliases: dict[str, str] = field(default_factory=dict)
    _plugins_loaded: bool = False

    @property
    def entry_point_group(self) -> str:
        return f"vispec_bench.{self.kind}s"

    def register(self, name: str, target: str, summary: str = "", aliases: tuple[str, ...] = (),
                 source: str = "builtin") -> None:
        for key in (name, *aliases):
            if key in self._entries or key in self._aliases:
                existing = self._resolve(key)
                raise RegistryError(
                    f"duplicate {self.kind} name {key!r}: already registered by {existing.source} "
                    f"as {existing.target!r}, now again by {source} as {target!r}"
                )
        self._entries[name] = Entry(name, target, summary, source)
        for alias in aliases:
            self._aliases[alias] = name

    def _resolve(self, name: str) -> Entry:
        return self._entries[self._aliases.get(name, name)]

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            self.register(ep.name, ep.value, source=f"plugin {dist}")

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        self._load_plugins()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: str) -> bool:
        self._load_plugins()
        return name in self._entries or name in self._aliases

    def get(self, name: str) -> Entry:
        self._load_plugins()
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


METHODS = Registry("method")
SUITES = Registry("suite")
MODELS = Registry("model")

# Built-in entries. Adding a method or suite is one line here plus its module.
METHODS.register("ar", "methods.ar:AR", "plain autoregressive decoding: the baseline every method is timed against")
METHODS.register("oracle", "methods.oracle:Oracle",
                 "diagnostic: proposes AR's own continuation, the engine's ceiling for a tree depth")
METHODS.register("eagle2", "methods.eagle2:Eagle2",
                 "EAGLE-2: one-layer feature draft + dynamic tree (depth/top_k/total_token as in EAGLE's code)")
METHODS.register("vispec", "methods.vispec:ViSpec",
                 "ViSpec: EAGLE-2 draft + vision adaptor (compressed image tokens) + global visual feature")
METHODS.register("vispec-noadaptor", "methods.vispec:ViSpecNoAdaptor",
                 "ViSpec ablation: image tokens enter the draft as in EAGLE-2, global feature on")
METHODS.register("vispec-noglobal", "methods.vispec:ViSpecNoGlobal",
                 "ViSpec ablation: adaptor splice on, no global feature")
METHODS.register("medusa", "methods.medusa:Medusa", "Medusa: K ResBlock heads on the last hidden state, fixed tree")
METHODS.register("medusa-dynamic", "methods.medusa_dynamic:MedusaDynamic",
                 "Medusa heads + shared lm_head + EAGLE-2's dynamic tree (the ViSpec paper's Medusa baseline)")
SUITES.register("easyvqa", "suites.easyvqa:EasyVQA", "easy-VQA test split (real 64x64 shapes, 13 answers)",
                aliases=("easy-vqa",))
SUITES.register("mmmu", "suites.mmmu:MMMU", "MMMU validation (30 subjects, up to 7 images), lmms-eval mmmu_val")
SUITES.register("seedbench", "suites.seedbench:SEEDBench", "SEED-Bench image questions, lmms-eval seedbench",
                aliases=("seed-bench",))
SUITES.register("scienceqa", "suites.scienceqa:ScienceQA", "ScienceQA-IMG test, lmms-eval scienceqa_img",
                aliases=("sqa",))
SUITES.register("vqav2", "suites.vqav2:VQAv2", "VQAv2 validation, ten-annotator accuracy, lmms-eval vqav2_val")
MODELS.register("testbed", "vispec_bench.models.testbed.model:build_testbed",
                "SmolLM2-135M-Instruct (real weights) + trained 64x64 vision tower in LLaVA (needs the built weights)")
MODELS.register("testbed-untrained", "vispec_bench.models.testbed.model:build_untrained_testbed",
                "the testbed with a seeded random vision tower: real language model, for pipeline checks")
MODELS.register("tiny-llava", "vispec_bench.models.tiny:build_tiny_llava",
                "random-init LlavaForConditionalGeneration with a locally trained BPE tokenizer")
MODELS.register("tiny-llava-next", "vispec_bench.models.tiny:build_tiny_llava_next",
                "random-init LlavaNextForConditionalGeneration (any-resolution tiling)")
MODELS.register("tiny-qwen25vl", "vispec_bench.models.tiny:build_tiny_qwen25vl",
                "random-init Qwen2_5_VLForConditionalGeneration (3-D mrope)")
