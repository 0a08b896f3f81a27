"""The benchmark runner: samples x engines x methods on one loaded target, recorded as they finish.

Order: for each sample, for each engine (the reference engine first: eager when listed), AR
first, then every other method, so that drift in machine state (thermal, frequency, background
load) hits AR, the methods and the engines alike, and every method can be checked against AR's
ids on its own engine for the same sample at once. Before any timed sample, the static engines'
caches are sized for the run's longest prompt, then on each engine AR and each method decode
the first sample once, untimed (warm-up: allocator, kernels, caches, and every graph the
compiled engine will use). A decode that still compiles a graph is flagged in its record
(`compiles`, `recompiled`) and kept out of every timing figure.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path

import torch

from vispec_bench.errors import InputError
from vispec_bench.running import environment
from vispec_bench.engine.acceptance import SamplingConfig
from vispec_bench.engine.adapter import make_adapter
from vispec_bench.engine.engines import Engine
from vispec_bench.running.distributed import init_from_environment, rank_device
from vispec_bench.running.referee import Float32Referee
from vispec_bench.engine.decode import decode
from vispec_bench.running.instruments import GpuMonitor, PhaseTimer
from vispec_bench.plugins.method import SampleContext, make_method, parse_method_args
from vispec_bench.results.metrics import summarize
from vispec_bench.models.loading import load_model, resolve_device, resolve_dtype
from vispec_bench.results.records import RunStore, record_engine, record_key
from vispec_bench.plugins.registry import METHODS
from vispec_bench.running.config import RunConfig
from vispec_bench.running.engine_setup import engine_list, reserve_for_run, warmup_info
from vispec_bench.plugins.suite import make_suite, sample_ids_hash

# Below this top-1/top-2 logit margin, a float32 divergence is a numerical tie between
# differently shaped matmuls (docs/metrics.md, "Output equivalence"), counted and reported as such.
# bf16/fp16 divergences are judged by the float32 referee (vispec_bench/running/referee.py).
NUMERICAL_TIE_MARGIN = 1e-4


def image_tokens_per_image(adapter, prompt) -> list[int]:
    """A record's `image_tokens`: the image tokens of each image in the prompt, its span's length,
    or, where the processor splits an image into sub-images, the sum over its runs."""
    lengths = [end - start for start, end in prompt.image_spans]
    per_image, first = [], 0
    for runs in adapter.runs_per_image(prompt.input_ids, prompt.image_spans):
        per_image.append(sum(lengths[first:first + runs]))
        first += runs
    return per_image


def command_line() -> str:
    """The command as the user typed it (`python -m vispec_bench ...`, not the __main__.py path)."""
    program = sys.argv[0]
    if program.endswith("__main__.py"):
        program = "python -m vispec_bench"
    return " ".join([program, *sys.argv[1:]])


def _method_list(names: list[str]) -> list[str]:
    names = [n.strip() for n in names if n.strip()]
    for name in names:
        METHODS.get(name)  # unknown name -> error with "did you mean"
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise InputError(f"--methods lists {', '.join(sorted(duplicates))} more than once")
    return ["ar"] + [n for n in names if n != "ar"]  # AR always runs, first, as the baseline


def equivalence(method_ids: list[int], ar_ids: list[int], diagnose=None) -> dict:
    """Exact match against AR, and at the first divergence what `diagnose(position, ar_token,
    method_token)` finds there (the target's margin; the referee's verdict in bf16/fp16).
    Without `diagnose` (temperature > 0, where ids are not expected to match) only the position."""
    if method_ids == ar_ids:
        return {"exact_match": True, "first_divergence": None, "margin": None, "numerical_tie": False}
    first = next((i for i, (a, b) in enumerate(zip(method_ids, ar_ids)) if a != b), min(len(method_ids), len(ar_ids)))
    method_token = method_ids[first] if first < len(method_ids) else None
    ar_token = ar_ids[first] if first < len(ar_ids) else None
    found = diagnose(first, ar_token, method_token) if diagnose is not None else {"margin": None}
    return {"exact_match": False, "first_divergence": first, "numerical_tie": False, "dtype_tie": False,
            **found, "method_token": method_token, "ar_token": ar_token}


class Runner:
    def __init__(self, config: RunConfig, out_dir: str | Path = "runs", run_id: str | None = None,
                 resume: str | Path | None = None, progress: bool = True, log=print, model_loader=load_model,
                 compile_backend: str = "inductor"):
        """`model_loader`: load_model, or one with builder options bound (e.g. another testbed weights directory).
        `compile_backend`: torch.compile's backend on the compiled engine (tests: "aot_eager", no codegen)."""
        self.config = config
        self.compile_backend = compile_backend
        self.log = log
        self.base_device = resolve_device(config.device)  # what the user asked for: part of the config
        self.dist = init_from_environment(self.base_device)
        self.device = rank_device(self.base_device, self.dist)  # this rank's device
        self.progress = progress and self.dist.is_main  # one set of bars, rank 0's share
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.sampling = SamplingConfig(config.temperature, config.top_p, config.top_k)
        method_names = _method_list(config.methods)
        raw_args = parse_method_args(config.method_args, method_names)
        self.engines = engine_list(config.engines)  # the reference engine first
        # One instance of each method per engine: a method's prepared draft belongs to one engine.
        self.engine_methods = {engine: [make_method(n, raw_args.get(n, {})) for n in method_names]
                               for engine in self.engines}
        self.methods = self.engine_methods[self.engines[0]]
        self.suite = make_suite(config.suite, config.prompt_mode, split=config.split, path=config.dataset_path,
                                name=config.dataset_name, revision=config.revision, fixtures=config.fixtures)
        self.samples = self.suite.select(config.limit, config.seed)
        if not self.samples:
            raise InputError(f"suite {config.suite} selected no samples")
        if config.repeats < 1:
            raise InputError(f"--repeats must be >= 1, got {config.repeats}")
        self.monitor = GpuMonitor(self.device)
        self._referee = None  # the float32 referee, created at the first bf16/fp16 divergence
        self.device_name = environment.device_name(self.device)
        # The target before the config: what it supplies (its default drafts) is part of each
        # method's config hash, so runs with different drafts are never taken as comparable.
        self.loaded = model_loader(config.model, self.dtype, self.device, seed=config.seed)
        for methods in self.engine_methods.values():
            for method in methods:
                method.resolve(self.loaded.default_drafts)
        resolved = self.resolved_config()
        shard = f"rank{self.dist.rank}" if self.dist.enabled else None
        rank_devices = self.dist.gather(self.device_name)
        if resume is not None:
            self.store = RunStore.resume(resume, resolved, shard, added={"engines": ["eager"]})
            return
        run_id = self.dist.broadcast(run_id or (
            f"{config.model.replace('/', '_')}-{config.suite}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"))
        run_dir = Path(out_dir) / run_id
        if self.dist.is_main:
            manifest = {"run_id": run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "command": command_line(), "config": resolved,
                        "run_config": dataclasses.asdict(config),  # as given (file + flags): what --resume reuses
                        "environment": environment.capture(self.device) | {"gpu": self.monitor.describe()},
                        "distributed": {"world_size": self.dist.world_size, "rank_devices": rank_devices}}
            RunStore.create(run_dir, manifest)
        self.dist.barrier()  # the manifest exists before any rank appends
        self.store = RunStore(run_dir, shard)

    def resolved_config(self) -> dict:
        ids = [s.sample_id for s in self.samples]
        config = dataclasses.asdict(self.config)
        config.pop("methods"), config.pop("method_args")
        config.update(device=self.base_device, dtype=str(self.dtype).removeprefix("torch."),
                      methods=[self._described(m) for m in self.methods],
                      sample_ids=ids, sample_ids_hash=sample_ids_hash(ids))
        return config

    def _described(self, method) -> dict:
        """The manifest's entry for a method: its config hash on the first engine, and on each
        engine where the run has several (the engine is part of the hash, eager adds nothing)."""
        described = method.describe() | {"config_hash": method.config_hash(self.engines[0])}
        if len(self.engines) > 1:
            described["config_hash_by_engine"] = {engine: method.config_hash(engine) for engine in self.engines}
        return described

    def run(self) -> Path:
        from tqdm.auto import tqdm

        adapters = {engine: make_adapter(self.loaded.model, self.loaded.processor,
                                         Engine(engine, self.device, backend=self.compile_backend))
                    for engine in self.engines}
        # Diagnostics (the margin at a divergence) run eager: never on a static cache or a compiled graph.
        self._diagnostic_adapter = adapters.get("eager") or make_adapter(self.loaded.model, self.loaded.processor)
        for engine in self.engines:
            for method in self.engine_methods[engine]:
                method.prepare(adapters[engine])
        records = self.store.records()
        done = {record_key(r) for r in records}
        ar_ids = {(r["sample_id"], record_engine(r)): r["new_ids"] for r in records
                  if r["method"] == "ar" and r.get("repeat", 0) == 0}
        if done:
            self.log(f"resuming {self.store.run_dir}: {len(done)} records already there, not redone")
        repeats = range(self.config.repeats)
        owned = [(index, sample) for index, sample in enumerate(self.samples) if self.dist.owns(index)]
        plan = [(engine, method) for engine in self.engines for method in self.engine_methods[engine]]
        todo = [(s, e, m, r) for r in repeats for _, s in owned for e, m in plan
                if (s.sample_id, m.name, e, r) not in done]
        warmups = []
        if not todo:
            self.log("nothing left to run" + (f" on rank {self.dist.rank}" if self.dist.enabled else ""))
        else:
            reserved = reserve_for_run(adapters, self.engine_methods, [s for _, s in owned], self.config.max_new_tokens)
            if self.config.warmup:
                for engine in self.engines:
                    start = time.perf_counter()
                    self._warm_up(adapters[engine], self.engine_methods[engine], todo[0][0])
                    warmups.append(warmup_info(adapters[engine], self.dist.rank, self.device_name,
                                               time.perf_counter() - start, reserved.get(engine)))
        gathered = [info for rank_infos in self.dist.gather(warmups) for info in rank_infos]
        if self.dist.is_main and gathered:
            self.store.add_to_manifest("warmups", gathered)

        total = len(owned) * self.config.repeats
        several = len(self.engines) > 1
        bars = {(e, m.name): tqdm(total=total, desc=f"{m.name + ('@' + e if several else ''):>24}", position=i,
                                  leave=True, disable=not self.progress, file=sys.stderr,
                                  initial=total - sum(1 for t in todo if t[1] == e and t[2] is m))
                for i, (e, m) in enumerate(plan)}
        try:
            for repeat in repeats:
                for index, sample in owned:
                    pending = [(e, m) for e, m in plan if (sample.sample_id, m.name, e, repeat) not in done]
                    if not pending:
                        continue
                    prompt = adapters[self.engines[0]].build_prompt(sample.messages, sample.images)  # untimed
                    for engine, method in pending:
                        record = self._run_one(adapters[engine], prompt, sample, index, method, ar_ids, repeat)
                        self.store.append(record)
                        bars[(engine, method.name)].update(1)
        except KeyboardInterrupt:
            self.log(f"\ninterrupted: finished records are saved; resume with --resume {self.store.run_dir}")
            raise
        finally:
            for bar in bars.values():
                bar.close()
        self.dist.barrier()  # every shard is complete before the merged summary
        if self.dist.is_main:
            self.store.write_summary(summarize(self.store.records(), self.store.manifest()))
        self.dist.barrier()
        return self.store.run_dir

    def _sample_seed(self, index: int) -> int:
        return self.config.seed * 1_000_003 + index  # same seed for AR and every method on a sample

    def _warm_up(self, adapter, methods, sample) -> None:
        prompt = adapter.build_prompt(sample.messages, sample.images)
        reference = decode(adapter, prompt, None, self.config.max_new_tokens, self.sampling).new_ids
        context = SampleContext(sample.sample_id, reference)
        for method in methods[1:]:
            decode(adapter, prompt, method.make_proposer(adapter, context), self.config.max_new_tokens, self.sampling)

    def _run_one(self, adapter, prompt, sample, index, method, ar_ids, repeat=0) -> dict:
        engine = adapter.engine.name
        context = SampleContext(sample.sample_id, ar_ids.get((sample.sample_id, engine)))
        proposer = method.make_proposer(adapter, context)
        is_cuda = torch.device(self.device).type == "cuda"
        if is_cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        before = self.monitor.snapshot()  # NVML reads stay outside decode's timed region
        result = decode(adapter, prompt, proposer, self.config.max_new_tokens, self.sampling,
                        seed=self._sample_seed(index))
        after = self.monitor.snapshot()
        peak_memory_mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20 if is_cuda else None
        breakdown = None
        if self.config.profile_rounds and repeat == 0:
            timer = PhaseTimer(self.device)
            profiled = method.make_proposer(adapter, context)
            with timer.instrument(adapter, profiled):  # target and draft forwards timed: the rest is the harness
                decode(adapter, prompt, profiled, self.config.max_new_tokens, self.sampling,
                       seed=self._sample_seed(index), phase_timer=timer)
            breakdown = timer.totals()
        text = adapter.tokenizer.decode(result.new_ids, skip_special_tokens=True)
        if method.name == "ar" and repeat == 0:
            ar_ids[(sample.sample_id, engine)] = result.new_ids  # the reference: it matches itself below
        reference = ar_ids[(sample.sample_id, engine)]  # AR on the same engine
        match = self._equivalence(result.new_ids, reference, prompt, sample)
        # AR on every other engine against AR on the reference engine (in float32 they must agree).
        reference_engine = self.engines[0]
        ar_reference = None
        if method.name == "ar" and engine != reference_engine and (sample.sample_id, reference_engine) in ar_ids:
            ar_reference = {"engine": reference_engine, **self._equivalence(
                result.new_ids, ar_ids[(sample.sample_id, reference_engine)], prompt, sample)}
        return {
            "sample_id": sample.sample_id,
            "sample_index": index,
            "method": method.name,
            "method_config_hash": method.config_hash(engine),
            "engine": engine,
            "lossless": method.is_lossless(),
            "tree_settings": method.runtime_settings(),
            "draft": method.resolved_draft,  # path + sha256 of the draft loaded; None without one
            "repeat": repeat,
            "rank": self.dist.rank,
            "device": self.device_name,
            "prompt_tokens": int(prompt.input_ids.shape[0]),
            "num_images": prompt.num_images,
            "image_tokens": image_tokens_per_image(adapter, prompt),
            "new_ids": result.new_ids,
            "num_new_tokens": len(result.new_ids),
            "stop_reason": result.stop_reason,
            "num_rounds": result.num_rounds,
            "accepted_lengths": result.accepted_lengths,
            "draft_depths": result.draft_depths,
            "draft_cost": result.draft_cost,  # the draft side's visual tokens and peak KV cache; None for AR
            "prefill_s": result.prefill_s,
            "decode_s": result.decode_s,
            "compiles": result.compiles,  # graphs compiled inside the timed decode: > 0 keeps it out of timing
            "recompiled": result.compiles > 0,
            "round_breakdown": breakdown,
            "energy": self.monitor.sample_stats(before, after, len(result.new_ids)),
            "peak_memory_mb": peak_memory_mb,
            "equivalence": match,
            "ar_reference": ar_reference,
            "answer": text,
            "references": sample.references,
            "score": self.suite.score(sample, text),
            "extra_scores": self.suite.extra_scores(sample, text),
        }

    def _equivalence(self, ids: list[int], reference: list[int], prompt, sample) -> dict:
        return equivalence(ids, reference, None if self.sampling.temperature > 0 else (
            lambda position, ar_token, method_token: self._diagnose(self._diagnostic_adapter, prompt, sample,
                                                                    reference, position, ar_token, method_token)))

    def _load_float32_adapter(self):
        loaded = load_model(self.config.model, torch.float32, self.device, seed=self.config.seed)
        return make_adapter(loaded.model, loaded.processor)

    def _diagnose(self, adapter, prompt, sample, ar_ids: list[int], position: int, ar_token, method_token) -> dict:
        """At a divergence (untimed): the target's top-1 minus top-2 logit after the prompt and AR's first
        `position` ids, also in ULPs of the model's dtype at the top-1 logit's magnitude; in bf16/fp16
        the float32 referee's verdict on it."""
        logits = adapter.teacher_forced_logits(prompt, ar_ids[:position])[position]  # [V]
        top2 = torch.topk(logits.float(), 2).values
        margin = float(top2[0] - top2[1])
        magnitude = max(abs(float(top2[0])), torch.finfo(adapter.dtype).tiny)
        ulp = torch.finfo(adapter.dtype).eps * 2.0 ** math.floor(math.log2(magnitude))
        found = {"margin": margin, "margin_ulps": margin / ulp, "numerical_tie": margin < NUMERICAL_TIE_MARGIN}
        if adapter.dtype in (torch.bfloat16, torch.float16):
            if self._referee is None:  # the float32 target is loaded at the first low-precision divergence
                self._referee = Float32Referee(self._load_float32_adapter)
            found["referee"] = self._referee.judge(logits, sample, ar_ids[:position], ar_token, method_token)
            found["dtype_tie"] = found["referee"]["verdict"] == "dtype_tie"
        return found
