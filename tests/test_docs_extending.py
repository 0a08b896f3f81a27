"""docs/extending.md's example method, taken from the page itself, registers through the
`vispec_bench.methods` entry-point group and runs through the CLI, reproducing AR."""

import json
import re
from importlib import metadata
from pathlib import Path

from vispec_bench.cli import main
from vispec_bench.plugins.registry import METHODS

PAGE = Path(__file__).resolve().parent.parent / "docs" / "extending.md"


def page_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_the_documented_method_is_one_file_plus_one_entry_point_line(tmp_path, monkeypatch):
    (tmp_path / "doc_lookup.py").write_text(page_blocks("python")[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    toml = next(block for block in page_blocks("toml") if "vispec_bench.methods" in block)
    name, target = re.search(r'^(\S+) = "([^"]+)"$', toml, flags=re.M).groups()
    plugin = metadata.EntryPoint(name=name, value="doc_lookup:" + target.partition(":")[2],
                                 group="vispec_bench.methods")
    real_entry_points = metadata.entry_points

    def entry_points(**selection):
        found = list(real_entry_points(**selection))
        return found + [plugin] if selection.get("group") == "vispec_bench.methods" else found

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    # an unfilled registry (restored after the test) fills again, now finding the plug-in
    for attribute, empty in (("_entries", {}), ("_aliases", {}), ("_filled", False), ("problems", [])):
        monkeypatch.setattr(METHODS, attribute, empty)
    args = ["run", "--model", "tiny-llava", "--methods", name, "--method-args", f"{name}.ngram=1",
            f"{name}.depth=3", "--limit", "2", "--max-new-tokens", "24", "--dtype", "float32", "--device", "cpu",
            "--out", str(tmp_path), "--run-id", "doc", "--no-progress", "--no-warmup", "--no-profile"]
    assert main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "doc" / "records.jsonl").read_text().splitlines()]
    mine = [r for r in records if r["method"] == name]
    assert len(mine) == 2 and all(r["equivalence"]["exact_match"] for r in mine)
    assert any(depth > 0 for r in mine for depth in r["draft_depths"])  # it did propose
