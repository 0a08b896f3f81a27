"""Command line: `python -m vispec_bench list|run|report|check|gen-data|train|testbed build`.

Building the parser and `list` import no torch: every flag comes from the torch-free config
dataclasses in vispec_bench/running/config.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from vispec_bench.errors import UserError
from vispec_bench.running.config_flags import add_config_arguments, build_config, given_values


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    from vispec_bench.running.config import RunConfig

    add_config_arguments(parser, RunConfig)
    parser.add_argument("--ablations", action="store_true",
                        help="also run every registered ablation of the run's methods (see `list --methods`)")
    parser.add_argument("--out", default="runs", help="directory that receives runs/<run_id>/")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help="continue an interrupted run with its stored config; finished samples are kept, not "
                             "redone (settings given with it must equal the stored ones)")
    parser.add_argument("--no-progress", action="store_true")


def cmd_list(args) -> int:
    from vispec_bench.plugins.registry import METHODS, MODELS, SUITES

    chosen = [(flag, reg) for flag, reg in (("methods", METHODS), ("suites", SUITES), ("models", MODELS))
              if getattr(args, flag)] or [("methods", METHODS), ("suites", SUITES), ("models", MODELS)]
    problems = []
    for title, registry in chosen:
        print(f"{title}:")
        entries = registry.entries()
        width = max([18, *(len(entry.name) for entry in entries)])
        for entry in entries:
            source = "" if entry.source == "builtin" else f"  [{entry.source}]"
            broken = "" if entry.error is None else "  [BROKEN]"
            print(f"  {entry.name:<{width}} {entry.summary}{source}{broken}")
        problems += registry.check() if args.check else registry.problems
        if registry is MODELS:
            print_families()
    if problems:
        print("problems:")
        print("\n".join(f"  {problem}" for problem in problems))
    return 1 if args.check and problems else 0


def print_families() -> None:
    from vispec_bench.models.families import FAMILIES

    print("families (a checkpoint directory or hub id loads by its config.json model_type):")
    width = max(len(family.model_type) for family in FAMILIES)
    for family in FAMILIES:
        tiny = f"tested on {family.tiny}: " if family.tiny else ""
        print(f"  {family.model_type:<{width}} {family.hf_class}, e.g. {family.example}; {tiny}{family.tests}")


EXTRA_SCORE_LABELS = {"names_shape_or_color": "names_shape/color"}


def format_summary(summary: dict) -> str:
    """The CLI table: the columns marked `cli` in the column table (intervals in brackets), then the
    suite's extra scores, then any unpaired records, named."""
    from vispec_bench.results import by_engine
    from vispec_bench.results.columns import COLUMNS, format_cell
    from vispec_bench.results.metrics import summary_rows

    columns = [c for c in COLUMNS if c.cli]
    extra = sorted({k for m in summary["methods"].values() for k in m.get("extra_scores") or {}})
    header = [c.label for c in columns] + [EXTRA_SCORE_LABELS.get(k, k) for k in extra]
    rows = []
    for row in summary_rows(summary):
        scores = row["_details"].get("extra_scores") or {}
        rows.append([format_cell(c, row) for c in columns] +
                    ["-" if scores.get(k) is None else f"{scores[k]:.2f}" for k in extra])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [f"{summary['model']} on {summary['suite']} ({summary['dtype']}, {summary['device']}); "
             "[95 % bootstrap interval over samples]",
             "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in rows]
    for u in summary.get("unpaired", []):
        on = f" on {u['engine']}" if len(summary.get("engines") or []) > 1 else ""
        lines.append(f"unpaired: {u['method']}{on} sample {u['sample_id']} repeat {u['repeat']}: {u['why']} "
                     "(excluded from every figure)")
    return "\n".join(lines + by_engine.summary_lines(summary))


def run_config_from_args(args):
    """File + flags over the defaults; with --resume, over the stored config, which they must equal."""
    from vispec_bench.plugins.registry import METHODS
    from vispec_bench.results.records import ConfigMismatchError, MANIFEST, read_json
    from vispec_bench.running.config import RunConfig
    from vispec_bench.running.config_flags import differences, stored_run_config

    given = given_values(args, RunConfig)
    base = stored_run_config(read_json(Path(args.resume) / MANIFEST)) if args.resume else {}
    if args.ablations:
        methods = list(given.get("methods", base.get("methods", RunConfig().methods)))
        given["methods"] = methods + [m for m in METHODS.ablations_of(methods) if m not in methods]
    if args.resume:
        changed = differences(base, given)
        if changed:
            details = "; ".join(f"{key}: stored {old!r}, given {new!r}" for key, (old, new) in changed.items())
            raise ConfigMismatchError(f"cannot resume {args.resume}: settings differ from its stored config "
                                      f"({details}); `run --resume {args.resume}` alone resumes it as it was")
    return build_config(RunConfig, given, base, command="run")


def cmd_run(args) -> int:
    from vispec_bench.running.runner import Runner

    config = run_config_from_args(args)
    runner = Runner(config, out_dir=args.out, run_id=args.run_id, resume=args.resume,
                    progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    run_dir = runner.run()
    if not runner.dist.is_main:  # under torchrun, rank 0 reports for everyone
        return 0
    summary = json.loads((run_dir / "summary.json").read_text())
    print(format_summary(summary))
    shards = "records.rank*.jsonl" if runner.dist.enabled else "records.jsonl"
    print(f"\nrecords: {run_dir}/{shards}\nsummary: {run_dir}/summary.json")
    return 0


def cmd_gen_data(args) -> int:
    from vispec_bench.drafts.datagen import generate_data
    from vispec_bench.running.config import GenDataConfig

    config = build_config(GenDataConfig, given_values(args, GenDataConfig), command="gen-data")
    path = generate_data(config, args.out, progress=not args.no_progress)
    print(f"training data: {path}")
    return 0


def cmd_train(args) -> int:
    from vispec_bench.drafts.training import train
    from vispec_bench.running.config import TrainConfig

    config = build_config(TrainConfig, given_values(args, TrainConfig), command="train")
    path = train(config, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    if os.environ.get("RANK", "0") == "0":  # under accelerate launch, process 0 reports
        print(f"draft checkpoint: {path}")
    return 0


def cmd_report(args) -> int:
    from pathlib import Path

    from vispec_bench.results.report import find_runs, write_report

    run_dirs = find_runs(args.runs, args.runs_root)
    out = Path(args.out or f"reports/report-{__import__('time').strftime('%Y%m%d-%H%M%S')}")
    write_report(run_dirs, out)
    print(f"report of {len(run_dirs)} run(s): {out}/index.html, {out}/index.md, {out}/summary.csv")
    return 0


def cmd_check(args) -> int:
    from vispec_bench.results.check import run_check

    return run_check(args.target, args.baseline, args.max_speedup_drop, args.max_tau_drop,
                     write=args.write_baseline, strict=args.strict)


def cmd_roofline(args) -> int:
    from vispec_bench.engine.engines import check_engine
    from vispec_bench.running.roofline import format_roofline, roofline

    engines = [check_engine(e.strip()) for e in args.engines.split(",") if e.strip()]
    result = roofline(args.model, [d.strip() for d in args.dtypes.split(",")], engines, args.device,
                      tokens=args.tokens, repeats=args.repeats)
    text = format_roofline(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "roofline.json").write_text(json.dumps(result, indent=1))
        (out / "roofline.md").write_text(f"`{' '.join(['python -m vispec_bench', *sys.argv[1:]])}`\n\n{text}\n")
    return 0


def cmd_testbed_build(args) -> int:
    from vispec_bench.models.loading import resolve_device
    from vispec_bench.models.testbed.build import build
    from vispec_bench.running.config import BuildConfig
    from vispec_bench.running.runner import command_line

    config = build_config(BuildConfig, given_values(args, BuildConfig), command="testbed build")
    config.device = resolve_device(config.device)
    work = build(config, command=command_line())
    print(f"testbed build finished; work directory {work}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vispec_bench",
                                     description="Benchmark speculative decoding for vision-language models.")
    sub = parser.add_subparsers(dest="command")
    p_list = sub.add_parser("list", help="list registered methods, suites and models")
    p_list.add_argument("--methods", action="store_true")
    p_list.add_argument("--suites", action="store_true")
    p_list.add_argument("--models", action="store_true")
    p_list.add_argument("--check", action="store_true",
                        help="import every entry (torch included) and report those that fail; exit 1 if any")
    p_list.set_defaults(func=cmd_list)
    p_run = sub.add_parser("run", help="benchmark methods against AR on a suite")
    _add_run_arguments(p_run)
    p_run.set_defaults(func=cmd_run)

    p_report = sub.add_parser("report", help="turn runs into index.md, index.html, summary.csv and plots")
    p_report.add_argument("runs", nargs="*", help="run directories or folders of runs (default: the latest run "
                                                   "of each model/suite/dtype/device under --runs-root)")
    p_report.add_argument("--runs-root", default="runs")
    p_report.add_argument("--out", default=None, help="report directory (default reports/report-<time>)")
    p_report.set_defaults(func=cmd_report)

    p_check = sub.add_parser("check", help="compare a run or report with a baseline; exit 1 on a regression")
    p_check.add_argument("target", metavar="RUN_OR_REPORT")
    p_check.add_argument("--baseline", default="reports/baseline.json")
    p_check.add_argument("--max-speedup-drop", type=float, default=0.10, help="relative, e.g. 0.10 = 10 %%")
    p_check.add_argument("--max-tau-drop", type=float, default=0.02, help="relative, e.g. 0.02 = 2 %%")
    p_check.add_argument("--write-baseline", action="store_true", help="create or update the baseline from the run")
    p_check.add_argument("--strict", action="store_true", help="also fail when entries are not comparable")
    p_check.set_defaults(func=cmd_check)

    p_roof = sub.add_parser("roofline", help="AR ms/token per engine and dtype against the weight-read floor "
                                              "(weight bytes / measured memory bandwidth), and a forward's profile")
    p_roof.add_argument("--model", default="testbed")
    p_roof.add_argument("--dtypes", default="float32,bfloat16", help="comma list")
    p_roof.add_argument("--engines", default="eager,static,compiled", help="comma list")
    p_roof.add_argument("--device", default="auto")
    p_roof.add_argument("--tokens", type=int, default=48, help="decode steps timed per repeat")
    p_roof.add_argument("--repeats", type=int, default=3)
    p_roof.add_argument("--out", default=None, help="directory for roofline.json and roofline.md")
    p_roof.set_defaults(func=cmd_roofline)

    from vispec_bench.running.config import BuildConfig, GenDataConfig, TrainConfig  # torch-free

    p_gen = sub.add_parser("gen-data", help="let the target answer suite prompts: training data for drafts")
    add_config_arguments(p_gen, GenDataConfig)
    p_gen.add_argument("--out", required=True, help="directory; an interrupted run resumes there")
    p_gen.add_argument("--no-progress", action="store_true")
    p_gen.set_defaults(func=cmd_gen_data)

    p_train = sub.add_parser("train", help="train a draft (eagle2, eaglevlm, medusa, vispec) on gen-data output, or "
                                                 "online (--online: the target answers during training)")
    add_config_arguments(p_train, TrainConfig)
    p_train.add_argument("--no-progress", action="store_true")
    p_train.set_defaults(func=cmd_train)

    p_testbed = sub.add_parser("testbed", help="the embedded testbed VLM (SmolLM2-135M + a trained vision tower)")
    testbed_sub = p_testbed.add_subparsers(dest="testbed_command", required=True)
    p_build = testbed_sub.add_parser("build", help="train the vision tower, generate draft data, train the drafts, "
                                                   "install the weights (resumable: re-run to continue)")
    add_config_arguments(p_build, BuildConfig)
    p_build.set_defaults(func=cmd_testbed_build)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done, 1 an unexpected error (traceback printed), 2 a user error (one line), 130 Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `python -m vispec_bench`: the default benchmark
        args = parser.parse_args(["run", *(argv or [])])
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except UserError as err:  # bad input, a missing file, an unusable plug-in: what to fix, on one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception:  # a bug or the machine (CUDA out of memory ...): the traceback is what is needed
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
