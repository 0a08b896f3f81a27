"""Every committed report re-derives from the records it carries: regenerating it from
reports/<name>/runs/ gives the committed summary.csv and index.md table, number for number."""

from pathlib import Path

import pytest

from vispec_bench.results.report import find_runs, write_report

REPORTS = Path(__file__).resolve().parents[1] / "reports"
COMMITTED = sorted(p for p in REPORTS.iterdir() if p.is_dir()) if REPORTS.is_dir() else []


def _table(index_md: Path) -> list[str]:
    return [line for line in index_md.read_text().splitlines() if line.startswith("| ")]


@pytest.mark.parametrize("report", COMMITTED, ids=[p.name for p in COMMITTED])
def test_committed_report_regenerates_from_its_records(report, tmp_path):
    if not any((run / "manifest.json").exists() for run in (report / "runs").glob("*")):
        pytest.skip(f"reports/{report.name} carries no records (runs/<run_id>/records.jsonl.gz + manifest.json): "
                    f"it predates them; re-run it with `reports/regenerate.sh {report.name}`")
    again = write_report(find_runs([str(report)]), tmp_path / report.name)
    assert (again / "summary.csv").read_text() == (report / "summary.csv").read_text()
    assert _table(again / "index.md") == _table(report / "index.md")


def test_at_least_one_committed_report_carries_its_records():
    with_records = [p.name for p in COMMITTED if any((p / "runs").glob("*/records*.jsonl*"))]
    if not with_records:
        pytest.skip("no committed report carries its records yet: the lead regenerates them with "
                    "reports/regenerate.sh (then this must pass)")
    assert with_records
