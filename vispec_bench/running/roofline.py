"""The physical reference of a decode step, and where a one-token forward's time goes.

A one-token decode step must read every weight of the decoder and the lm_head once, so its
floor on a memory-bound machine is   weight bytes per token / memory bandwidth.
`python -m vispec_bench roofline` measures the bandwidth on this machine (a large read and a
large copy, best of several), AR's decode time per token on each engine and dtype, their ratio
to the floor, and a profile of one-token forwards split into matmul / attention / everything
else, with the bandwidth the matmuls reach. Timed code runs alone, after a warm-up (compiles
included), and never inside a profiler except in the separate profiling pass.
"""

from __future__ import annotations

import statistics
import time

import torch

from vispec_bench.running.instruments import median_seconds, synchronize

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_addmm_activation", "mkldnn::_linear_pointwise",
              "aten::linear", "aten::matmul", "mkl::_mkl_linear")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention",
                 "aten::_scaled_dot_product_attention_math", "aten::_scaled_dot_product_efficient_attention",
                 "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_cudnn_attention")


def measure_bandwidth(device="cpu", megabytes: int = 1024, repeats: int = 7) -> dict:
    """Memory bandwidth in GB/s: a sum over `megabytes` (reads them once) and a copy (reads and
    writes them); the reference is the better of the two, what a streaming kernel reaches here."""
    source = torch.ones(megabytes * 2 ** 20 // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    size = source.numel() * 4
    read_s = median_seconds(lambda: source.sum(), device, repeats)
    copy_s = median_seconds(lambda: target.copy_(source), device, repeats)
    read, copy = size / read_s / 1e9, 2 * size / copy_s / 1e9
    return {"read_gbs": read, "copy_gbs": copy, "bandwidth_gbs": max(read, copy), "megabytes": megabytes,
            "threads": torch.get_num_threads()}


def weight_bytes_per_token(adapter) -> int:
    """Bytes a one-token forward must read: the decoder's weights (its input embedding excepted:
    one row is looked up) and the lm_head (a tied embedding is read in full there)."""
    embedding = adapter.embed_tokens.weight
    seen, total = set(), 0
    for parameter in [*adapter.decoder.parameters(), adapter.lm_head.weight]:
        if id(parameter) in seen or (parameter is embedding and parameter is not adapter.lm_head.weight):
            continue
        seen.add(id(parameter))
        total += parameter.numel() * parameter.element_size()
    return total


def ar_ms_per_token(adapter, prompt, tokens: int, repeats: int) -> float:
    """Median decode time per token of AR (prefill excluded): `tokens` one-token forwards from the prompt."""
    from vispec_bench.engine.acceptance import SamplingConfig
    from vispec_bench.engine.decode import decode

    def one():
        return decode(adapter, prompt, None, tokens + 1, SamplingConfig())

    one()  # warm-up: compiles on the compiled engine, caches and allocator everywhere
    per_token = []
    for _ in range(repeats):
        result = one()
        per_token.append(result.decode_s / max(len(result.new_ids) - 1, 1))
    return 1000 * statistics.median(per_token)


def profile_forward(adapter, prompt, steps: int = 8) -> dict:
    """Self time of the ops of `steps` one-token forwards (eager), split into matmul, attention
    and everything else (norms, rope, activations, copies, Python and dispatch overhead)."""
    from torch.profiler import ProfilerActivity, profile

    adapter.prefill(prompt)
    token = prompt.input_ids[-1:]
    adapter.forward(token)
    adapter.commit([0])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if adapter.device.type == "cuda" else [])
    synchronize(adapter.device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            adapter.forward(token)
            adapter.commit([0])
        synchronize(adapter.device)
    wall = (time.perf_counter() - start) / steps
    split = {"matmul": 0.0, "attention": 0.0, "other_ops": 0.0}
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6 / steps
        if event.key in MATMUL_OPS:
            split["matmul"] += seconds
        elif event.key in ATTENTION_OPS:
            split["attention"] += seconds
        else:
            split["other_ops"] += seconds
    split = {k: 1000 * v for k, v in split.items()}
    # What no op accounts for: Python (HF modules, our adapter), dispatch, the profiler's own cost.
    split["unaccounted"] = max(1000 * wall - sum(split.values()), 0.0)
    return {"ms_per_forward_profiled": 1000 * wall, **{f"{k}_ms": v for k, v in split.items()},
            "top_ops": [(e.key, round(e.self_cpu_time_total / 1e3 / steps, 3))
                        for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]]}


def roofline(model: str, dtypes: list[str], engines: list[str], device: str = "cpu", tokens: int = 48,
             repeats: int = 3, bandwidth: dict | None = None) -> dict:
    """The whole measurement for one model (see the module docstring)."""
    from vispec_bench.engine.adapter import make_adapter
    from vispec_bench.models.loading import load_model, resolve_device, resolve_dtype
    from vispec_bench.plugins.suite import make_suite

    device = resolve_device(device)
    bandwidth = bandwidth or measure_bandwidth(device)
    sample = make_suite("easyvqa", "long").select(1, 0)[0]
    rows = []
    for dtype_name in dtypes:
        dtype = resolve_dtype(dtype_name, device)
        loaded = load_model(model, dtype, device)
        eager = make_adapter(loaded.model, loaded.processor)
        prompt = eager.build_prompt(sample.messages, sample.images)
        weight_bytes = weight_bytes_per_token(eager)
        floor_ms = 1000 * weight_bytes / (bandwidth["bandwidth_gbs"] * 1e9)
        profile = profile_forward(eager, prompt)
        for engine in engines:
            adapter = eager if engine == "eager" else make_adapter(loaded.model, loaded.processor, engine)
            ms = ar_ms_per_token(adapter, prompt, tokens, repeats)
            rows.append({"dtype": dtype_name, "engine": engine, "ar_ms_per_token": ms, "weight_bytes": weight_bytes,
                         "floor_ms": floor_ms, "ratio_to_floor": ms / floor_ms,
                         "compile_s": adapter.engine.compile_s, "profile_eager": profile,
                         "matmul_gbs": weight_bytes / (profile["matmul_ms"] / 1000) / 1e9})
    return {"model": model, "device": device, "bandwidth": bandwidth, "tokens": tokens, "repeats": repeats,
            "rows": rows}


def format_roofline(result: dict) -> str:
    bw = result["bandwidth"]
    lines = [f"model {result['model']} on {result['device']} ({bw['threads']} threads): memory bandwidth "
             f"{bw['bandwidth_gbs']:.1f} GB/s (read {bw['read_gbs']:.1f}, copy {bw['copy_gbs']:.1f}); AR decode over "
             f"{result['tokens']} tokens, median of {result['repeats']}", "",
             "| dtype | engine | weights (MB) | floor (ms/token) | AR (ms/token) | AR / floor | compile (s) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        lines.append(f"| {row['dtype']} | {row['engine']} | {row['weight_bytes'] / 1e6:.1f} | {row['floor_ms']:.2f} | "
                     f"{row['ar_ms_per_token']:.2f} | {row['ratio_to_floor']:.2f}x | {row['compile_s']:.1f} |")
    lines += ["", "One-token eager forward, profiled (self time per forward):", "",
              "| dtype | profiled ms | matmul ms | attention ms | other ops ms | unaccounted (Python, dispatch) ms "
              "| matmul GB/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    seen = set()
    for row in result["rows"]:
        if row["dtype"] in seen:
            continue
        seen.add(row["dtype"])
        p = row["profile_eager"]
        lines.append(f"| {row['dtype']} | {p['ms_per_forward_profiled']:.2f} | {p['matmul_ms']:.2f} | "
                     f"{p['attention_ms']:.2f} | {p['other_ops_ms']:.2f} | {p['unaccounted_ms']:.2f} | "
                     f"{row['matmul_gbs']:.1f} |")
    return "\n".join(lines)
