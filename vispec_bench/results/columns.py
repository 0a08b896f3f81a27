"""The one table of columns: every figure and identity field of a summary row, with its label,
format and definition. The CLI summary, summary.csv, the Markdown/HTML report (table and
definitions section) and `check` (what it keeps, parses and compares) all read this table.

Re-exported by vispec_bench.results.metrics, which computes the values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str  # key in summary rows, summary.csv and baseline entries
    label: str  # short header in the CLI and report tables
    fmt: str  # format of one value
    definition: str
    kind: str = "float"  # text | int | float | bool | list (CSV: values joined by spaces)
    ci: bool = False  # has a 95 % bootstrap interval: <name>_ci_low, <name>_ci_high
    comparable: bool = False  # must be equal in a run and its baseline for `check` to compare them
    cli: bool = False  # shown in the CLI summary table
    table: bool = False  # shown in the report's table


def _c(*args, **kwargs) -> Column:
    return Column(*args, **kwargs)


COLUMNS: tuple[Column, ...] = (
    # --- what was measured (identity; `check` compares only runs where these are equal) ---
    _c("model", "model", "{}", "target model name as given to --model", "text", comparable=True, table=True),
    _c("model_identity", "model id", "{}", "the target weights' identity (sha256 or revision) where the run "
       "recorded one", "text", comparable=True),
    _c("suite", "suite", "{}", "evaluation suite", "text", comparable=True, table=True),
    _c("dataset_path", "dataset", "{}", "dataset hub id or directory overriding the suite's", "text", comparable=True),
    _c("dataset_name", "config", "{}", "dataset config name", "text", comparable=True),
    _c("split", "split", "{}", "dataset split", "text", comparable=True),
    _c("revision", "revision", "{}", "dataset revision", "text", comparable=True),
    _c("fixtures", "fixtures", "{}", "the suite's bundled offline rows instead of the dataset", "bool",
       comparable=True),
    _c("prompt_mode", "prompt", "{}", "short answers or long answers (the papers' setting)", "text",
       comparable=True),
    _c("method", "method", "{}", "decoding method; (lossy) marks a method that may change the output", "text",
       cli=True, table=True),
    _c("config_hash", "config", "{}", "hash of the method's code path and options (its default draft included)",
       "text", comparable=True),
    _c("draft_sha256", "draft", "{}", "sha256 of the draft checkpoint the records name, where they name one",
       "text", comparable=True),
    _c("finished_ids_hash", "ids", "{}", "hash of the sample ids this method finished and paired with AR "
       "(the samples actually measured, not the ones planned)", "text", comparable=True),
    _c("temperature", "T", "{}", "sampling temperature (0 = greedy)", comparable=True),
    _c("top_p", "top_p", "{}", "nucleus sampling threshold", comparable=True),
    _c("top_k", "top_k", "{}", "top-k sampling (0 = off)", "int", comparable=True),
    _c("seed", "seed", "{}", "sample selection and sampling seed", "int", comparable=True),
    _c("max_new_tokens", "cap", "{}", "token cap, the same for every method", "int", comparable=True),
    _c("dtype", "dtype", "{}", "target dtype", "text", comparable=True, table=True),
    _c("device", "device", "{}", "device the run was measured on", "text", comparable=True, table=True),
    _c("engine", "engine", "{}", "decode engine: eager (HF eager + a growing cache), static (preallocated "
       "cache) or compiled (static + torch.compile); records from before engines existed ran on eager", "text",
       comparable=True, cli=True, table=True),
    _c("warmup", "warm-up", "{}", "an untimed warm-up decode of each method preceded the timed ones", "bool",
       comparable=True),
    _c("versions", "versions", "{}", "torch, transformers, vispec-bench and git commit; shown by `check` when "
       "they differ, not a reason to refuse a comparison", "text"),
    # --- figures ---
    _c("num_samples", "samples", "{}", "samples in every figure of the row: those the method finished with a "
       "matching AR record (same sample, repeat and engine)", "int", cli=True, table=True),
    _c("num_repeats", "repeats", "{}", "timed passes over the samples; AR repeat r pairs with method repeat r",
       "int"),
    _c("num_unpaired", "unpaired", "{}", "records without their partner (AR or method, same sample, repeat and "
       "engine); named in summary.json and excluded from every figure", "int", cli=True, table=True),
    _c("new_tokens", "tokens", "{}", "generated tokens of the paired records, one pass over the samples (repeat "
       "0, or the first paired repeat)", "int", cli=True, table=True),
    _c("mean_new_tokens", "tok/sample", "{:.0f}", "new_tokens / num_samples", cli=True),
    _c("mean_accepted_length", "τ", "{:.2f}", "mean accepted length: tokens emitted per target forward "
       "(accepted draft tokens + 1 bonus token) over all rounds; AR is 1.00", ci=True, cli=True, table=True),
    _c("mean_accepted_length_excl_bonus", "τ−1", "{:.2f}", "τ − 1, the ViSpec/MMSpec table convention",
       table=True),
    _c("speedup_decode", "speedup (decode)", "{:.2f}x", "per-token decode speedup over AR on the same engine: "
       "(Σ tokens_method / Σ t_method) ÷ (Σ tokens_AR / Σ t_AR) over the paired records; tokens and time after "
       "the first token; equals Σ t_AR / Σ t_method when the ids match", ci=True, cli=True, table=True),
    _c("speedup_e2e", "speedup (e2e)", "{:.2f}x", "the same per-token ratio end to end (vision encoder, prefill "
       "and first token included)", ci=True, cli=True, table=True),
    _c("speedup_decode_vs_best_ar", "vs best AR (decode)", "{:.2f}x", "the per-token decode speedup against AR "
       "on the run's fastest AR engine (best_ar_engine), same samples and repeats, instead of AR on the method's "
       "own engine: the figure to quote (equal to speedup (decode) in a one-engine run)", ci=True, cli=True,
       table=True),
    _c("speedup_e2e_vs_best_ar", "vs best AR (e2e)", "{:.2f}x", "the end-to-end per-token speedup against AR on "
       "the run's fastest AR engine", ci=True, table=True),
    _c("draft_visual_tokens", "draft visual", "{:.0f}", "mean visual positions the draft's KV cache holds for "
       "the prompt per record (record `draft_cost.visual_tokens`: EAGLE-2 every image token, ViSpec num_q − 1 "
       "per image; 0 for Medusa and ngram, which keep no draft cache); — for AR and for records without it",
       table=True),
    _c("draft_kv_tokens", "draft KV tok", "{:.0f}", "mean peak entries of the draft's KV cache over a decode "
       "(prompt pairs, committed tokens and the largest draft tree)", table=True),
    _c("draft_kv_mib", "draft KV MiB", "{:.2f}", "mean peak draft KV cache size in MiB: KV tokens × 2 (K, V) × "
       "layers × KV heads × head dim × the draft's element size", table=True),
    _c("draft_compression", "compression", "{}", "how the draft's cache compresses the images, where the method "
       "names it (e.g. ViSpec adaptor:1/image)", "text"),
    _c("best_ar_engine", "best AR", "{}", "the engine whose AR decodes fastest per token over the run (lowest "
       "Σ decode time / Σ decode tokens of its AR records)", "text"),
    _c("speedup_decode_geomean", "geomean", "{:.2f}x", "geometric mean over samples of the per-sample decode "
       "throughput ratio (each sample's repeats pooled)", ci=True),
    _c("speedup_decode_per_repeat", "per repeat", "{}", "the decode speedup of each repeat separately", "list"),
    _c("speedup_decode_median_repeat", "median repeat", "{:.2f}x", "median of the per-repeat decode speedups"),
    _c("speedup_decode_std", "± std", "{:.2f}", "standard deviation of the per-repeat decode speedups"),
    _c("num_recompiled", "recompiled", "{}", "paired records left out of every timing figure because a graph "
       "was compiled inside their timed decode (theirs or their AR partner's; named in summary.json)", "int",
       cli=True, table=True),
    _c("tokens_per_s", "tok/s", "{:.1f}", "generated tokens / (prefill + decode time) over the paired records",
       cli=True, table=True),
    _c("exact_match_rate", "exact match", "{:.2f}", "fraction of paired records whose ids equal AR's "
       "(meaningful at temperature 0)", cli=True, table=True),
    _c("num_divergences", "divergences", "{}", "paired records whose ids differ from AR's", "int"),
    _c("num_tie_samples", "tie samples", "{}", "samples whose divergences are all excused ties: a float32 "
       "top-two margin < 1e-4, or a bf16/fp16 divergence the float32 referee called rounding", "int", table=True),
    _c("num_unexplained_divergences", "unexplained", "{}", "divergent records not excused as a tie; a lossless "
       "method at temperature 0 must have none", "int", table=True),
    _c("divergent_samples", "divergent", "{}", "sample#repeat of each unexplained divergence", "list"),
    _c("accuracy", "accuracy", "{:.2f}", "suite score of the answers", cli=True, table=True),
    _c("joules_per_token", "J/token", "{:.3f}", "NVML energy per generated token; absent on a CPU", table=True),
    _c("peak_memory_mb", "peak MB", "{:.0f}", "peak GPU memory allocated during a decode"),
    _c("lossless", "lossless", "{}", "the method claims AR's output distribution", "bool"),
    _c("run_id", "run", "{}", "run directory name", "text"),
    _c("created", "created", "{}", "when the run started", "text"),
)
COLUMN_BY_NAME = {column.name: column for column in COLUMNS}
COMPARABILITY = tuple(c.name for c in COLUMNS if c.comparable)


def csv_fields() -> list[str]:
    fields = []
    for column in COLUMNS:
        fields.append(column.name)
        if column.ci:
            fields += [f"{column.name}_ci_low", f"{column.name}_ci_high"]
    return fields


def format_value(column: Column, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if column.kind == "list":
        return " ".join(str(v) for v in value) if isinstance(value, list) else str(value)
    return column.fmt.format(value)


def format_cell(column: Column, row: dict) -> str:
    """One cell: the value, its 95 % interval in brackets where there is one, (lossy) after a lossy method."""
    text = format_value(column, row.get(column.name))
    if column.ci and row.get(f"{column.name}_ci_low") is not None:
        low, high = row[f"{column.name}_ci_low"], row[f"{column.name}_ci_high"]
        text += f" [{format_value(column, low)}, {format_value(column, high)}]"
    if column.name == "method" and row.get("lossless") is False:
        text += " (lossy)"
    return text


def csv_value(column_name: str, value):
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return value


def parse_csv_value(field: str, text: str):
    """A summary.csv cell back to its value, by the column's kind."""
    column = COLUMN_BY_NAME.get(field.removesuffix("_ci_low").removesuffix("_ci_high"))
    kind = column.kind if column is not None and not field.endswith(("_ci_low", "_ci_high")) else "float"
    if text in (None, ""):
        return [] if kind == "list" else None
    if kind == "text":
        return text
    if kind == "bool":
        return text == "True"
    if kind == "list":
        return [_number(v) for v in text.split()]
    return _number(text)


def _number(text: str):
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def definitions() -> list[str]:
    """The report's definitions section: every column that the report's or the CLI's table shows."""
    return [f"{c.label} (`{c.name}`): {c.definition}" + (" — with its 95 % bootstrap interval over samples "
                                                           "[low, high]" if c.ci else "")
            for c in COLUMNS if c.table or c.cli]
