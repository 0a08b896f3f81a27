"""Engine settings: how the target's and the drafts' forwards execute (`--engine eager|static|compiled`).

- `eager`: Hugging Face eager modules and a `DynamicCache` that grows by concatenation (one
  allocation per layer per forward) and is cropped after each round.
- `static`: one preallocated KV cache per network, sized once for the run (prompt + token cap +
  the largest verify block, rounded up), reused across samples; the accepted path is copied
  into place and the rest dropped by moving the length back (no allocation per round). Every
  forward gets an explicit 4-D mask over the whole capacity, so shapes do not grow with the
  sequence.
- `compiled`: `static`, plus `torch.compile` of the target's decode/verify forward (and the
  draft's per-level forward) at a few fixed token counts: a block of n tokens is padded to its
  bucket (the smallest registered size >= n; padding rows see only themselves and are dropped
  at commit). On CUDA with `mode="reduce-overhead"` (CUDA graphs). The prefill stays eager
  (one call per sample, its length varies).

Compilation happens in the runner's warm-up; a compilation inside the timed region is counted
(`compiles`, from dynamo's graph counter) and the record is flagged, never silently averaged.
Methods do not fork per engine: they ask the engine for caches, masks and compiled callables.
"""

from __future__ import annotations

import difflib
import time
from contextlib import contextmanager

import torch

from vispec_bench.errors import InputError

ENGINES = ("eager", "static", "compiled")
CAPACITY_STEP = 256  # cache capacity is rounded up to this, so prompts of similar length share compiled shapes
DEFAULT_VERIFY_SLACK = 64  # room for a verify block when a proposer does not say its size


def reserved_slack(proposer) -> int:
    """Cache entries beyond prompt + token cap that a proposer's round may append at once (its
    largest verify block or its draft's cache_slack; DEFAULT_VERIFY_SLACK when it does not say)."""
    if proposer is None:
        return 1
    return max(proposer.max_verify_tokens or DEFAULT_VERIFY_SLACK, proposer.cache_slack)


def check_engine(name: str) -> str:
    if name not in ENGINES:
        close = difflib.get_close_matches(name, ENGINES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"unknown engine {name!r}: choose from {', '.join(ENGINES)}{hint}")
    return name


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process (a compile inside a timed region raises it)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - torch without dynamo
        return 0
    return int(counters["stats"]["unique_graphs"])


class Engine:
    def __init__(self, name: str = "eager", device: torch.device | str = "cpu", backend: str = "inductor"):
        self.name = check_engine(name)
        self.backend = backend  # torch.compile backend (tests use "aot_eager": the same tracing, no codegen)
        self.device = torch.device(device)
        self.static = name in ("static", "compiled")
        self.compiled = name == "compiled"
        self.capacity = 0  # KV slots of every static cache; grows only through reserve()
        self.buckets: list[int] = []  # verify-block sizes the compiled forwards are specialised to
        self.compile_s = 0.0  # wall time of calls that compiled a graph (warm-up, normally)
        self._caches: dict = {}

    def describe(self) -> dict:
        return {"engine": self.name, "cache_capacity": self.capacity or None, "buckets": list(self.buckets)}

    # --- caches ---------------------------------------------------------------------------
    def reserve(self, tokens: int) -> None:
        """Make every static cache hold at least `tokens` entries (rounded up to CAPACITY_STEP).

        Growing replaces the caches (and so the compiled graphs' shapes): the runner reserves the
        largest prompt of the run before its warm-up, so this never happens in a timed region."""
        if not self.static:
            return
        needed = -(-tokens // CAPACITY_STEP) * CAPACITY_STEP
        if needed > self.capacity:
            self.capacity = needed
            self._caches.clear()

    def new_cache(self, config, key: str = "target"):
        """An empty KV cache for a network with this (text) config. Static engines reuse one
        preallocated cache per `key` (target, draft...) across samples: emptied, not reallocated."""
        from transformers import DynamicCache, StaticCache

        if not self.static:
            return DynamicCache()
        cache = self._caches.get(key)
        if cache is None:
            cache = StaticCache(config=config, max_cache_len=self.capacity)
            self._caches[key] = cache
        else:
            empty(cache)
        return cache

    def mask(self, visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """bool [n, kv] (True = may attend) -> additive float mask [1, 1, n, width]; on a static
        engine width is the cache capacity (the columns beyond kv are masked)."""
        width = self.capacity if self.static else visible.shape[1]
        if visible.shape[1] > width:
            raise InputError(f"a forward needs {visible.shape[1]} cache slots but the {self.name} engine reserved "
                             f"{width}: reserve more (prompt + max_new_tokens + verify block)")
        mask = torch.full((visible.shape[0], width), torch.finfo(dtype).min, dtype=dtype, device=visible.device)
        mask[:, :visible.shape[1]].masked_fill_(visible, 0.0)
        return mask[None, None]

    # --- compiled forwards ----------------------------------------------------------------
    def bucket(self, num_tokens: int) -> int:
        """The padded size of a block of num_tokens: the smallest registered bucket that holds it
        (registering num_tokens when none does). Eager and static engines never pad."""
        if not self.compiled:
            return num_tokens
        fitting = [b for b in self.buckets if b >= num_tokens]
        if fitting:
            return min(fitting)
        self.register_bucket(num_tokens)
        return num_tokens

    def register_bucket(self, num_tokens: int) -> None:
        if self.compiled and num_tokens not in self.buckets:
            self.buckets = sorted([*self.buckets, num_tokens])

    def compile(self, function):
        """`function` compiled for this engine (itself on eager/static), with the time of the
        calls that compiled a graph added to compile_s."""
        if not self.compiled:
            return function
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        # Each (network, bucket) is one cached graph of the same Python function; past dynamo's
        # default limit (8) it would silently run the function eagerly. Raise the limit, and make
        # hitting it an error rather than an eager run reported as compiled.
        config = torch._dynamo.config
        config.cache_size_limit = max(config.cache_size_limit, 64)
        config.accumulated_cache_size_limit = max(config.accumulated_cache_size_limit, 1024)
        config.fail_on_cache_limit_hit = True
        compiled = torch.compile(function, dynamic=False, mode=mode, backend=self.backend)

        def call(*args, **kwargs):
            before = compiled_graphs()
            start = time.perf_counter()
            out = compiled(*args, **kwargs)
            if compiled_graphs() != before:
                self.compile_s += time.perf_counter() - start
            return out

        return call


def empty(cache) -> None:
    """Set a static cache's length back to 0 in place (the stale entries are never attended)."""
    for layer in cache.layers:
        length = getattr(layer, "cumulative_length", None)
        if isinstance(length, torch.Tensor):
            length.zero_()
        elif length is not None:
            layer.cumulative_length = 0


def drop_last(cache, num_entries: int) -> None:
    """Drop a cache's last `num_entries` entries, layer by layer (what HF's `Cache.crop(-n)` does).
    transformers 5.17's StaticLayer has no `crop` (later versions add one): a static layer's length
    is only its cumulative_length counter, moved back here; the stale slots beyond it are masked
    until overwritten."""
    for layer in cache.layers:
        if hasattr(layer, "crop"):
            layer.crop(-num_entries)  # negative = entries to drop
        elif isinstance(layer.cumulative_length, torch.Tensor):
            layer.cumulative_length.sub_(num_entries)
        else:
            layer.cumulative_length -= num_entries


@contextmanager
def count_compiles(result: dict):
    """Counts graphs compiled inside the block into result["compiles"]."""
    before = compiled_graphs()
    try:
        yield result
    finally:
        result["compiles"] = compiled_graphs() - before
