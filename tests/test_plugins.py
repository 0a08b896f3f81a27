"""Third-party plug-ins: a throwaway package installed with pip into a temp dir registers a method
through an entry point and runs it through the CLI; broken plug-ins leave the registry complete."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The recipe docs/extending.md describes: one module with the method, one entry-point line.
REPEAT_METHOD = '''
"""Drafts the last emitted token `depth` times: a constant-depth chain, lossless by verification."""
from dataclasses import dataclass

import torch

from vispec_bench.engine.draft_tree import chain
from vispec_bench.engine.proposer import Proposer
from vispec_bench.plugins.method import Method


@dataclass
class RepeatOptions:
    depth: int = 2


class RepeatProposer(Proposer):
    def __init__(self, depth):
        self.depth = depth

    def propose(self, emitted, budget):
        depth = min(self.depth, budget - 1)
        return chain(torch.tensor([emitted[-1]] * depth)) if depth >= 1 else None


class RepeatLast(Method):
    Options = RepeatOptions

    def make_proposer(self, adapter, context):
        return RepeatProposer(self.options.depth)
'''


def _install(tmp_path: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """Build and pip-install a one-module package into tmp_path/site; returns that directory."""
    package = tmp_path / "src" / dist
    package_name = dist.replace("-", "_")
    (package / package_name).mkdir(parents=True)
    (package / package_name / "__init__.py").write_text("")
    for name, code in modules.items():
        (package / package_name / f"{name}.py").write_text(code)
    lines = "\n".join(f'{name} = "{value}"' for name, value in entry_points.items())
    (package / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "0.1"

        [tool.setuptools]
        packages = ["{package_name}"]

        [project.entry-points."vispec_bench.methods"]
        """) + lines + "\n")
    site = tmp_path / "site"
    # --no-build-isolation: setuptools comes from this venv, so nothing is downloaded.
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), str(package)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert list(site.glob(f"{package_name}-0.1.dist-info/entry_points.txt"))
    return site


def _cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{site}:{REPO}")
    return subprocess.run([sys.executable, "-m", "vispec_bench", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=site)


def test_plugin_method_installed_by_pip_is_listed_and_runs_through_the_cli(tmp_path):
    site = _install(tmp_path, "vispec-repeat", {"repeat-last": "vispec_repeat.method:RepeatLast"},
                    {"method": REPEAT_METHOD})
    listed = _cli(site, "list", "--methods")
    assert listed.returncode == 0, listed.stderr
    assert "repeat-last" in listed.stdout and "[plugin vispec-repeat 0.1]" in listed.stdout
    assert "eagle2" in listed.stdout and "problems" not in listed.stdout and listed.stderr == ""

    ran = _cli(site, "run", "--model", "tiny-llava", "--methods", "repeat-last", "--limit", "1", "--max-new-tokens",
               "4", "--dtype", "float32", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "runs"),
               "--run-id", "plug")
    assert ran.returncode == 0, ran.stderr
    records = [json.loads(line) for line in (tmp_path / "runs" / "plug" / "records.jsonl").read_text().splitlines()]
    assert [r["method"] for r in records] == ["ar", "repeat-last"]
    assert records[1]["equivalence"]["exact_match"] and records[1]["num_new_tokens"] == 4


BROKEN_MODULE = "import a_dependency_that_is_not_installed_anywhere\n"


def test_broken_plugins_are_reported_and_the_registry_stays_complete(tmp_path):
    """One distribution with: a module that fails to import, an entry point to a missing module,
    a name a built-in already has; plus a good entry in the same distribution."""
    site = _install(tmp_path, "vispec-broken", {
        "broken-import": "vispec_broken.broken:Method",
        "missing-module": "vispec_not_installed.method:Method",
        "eagle2": "vispec_broken.method:RepeatLast",  # clashes with the built-in
        "repeat-ok": "vispec_broken.method:RepeatLast",
    }, {"method": REPEAT_METHOD, "broken": BROKEN_MODULE})

    listed = _cli(site, "list", "--methods")
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.split("problems:")[0].splitlines()[1:]]
    assert {"ar", "oracle", "eagle2", "medusa", "vispec", "broken-import", "missing-module", "repeat-ok"} <= set(names)
    problems = listed.stdout.split("problems:")[1]
    assert "duplicate method name 'eagle2'" in problems and "vispec-broken 0.1" in problems
    assert "the first registration is kept" in problems
    assert "'missing-module' from plugin vispec-broken 0.1 is broken" in problems
    assert "warning: duplicate method name 'eagle2'" in listed.stderr  # also on stderr, for every command

    # `list --check` imports each entry and finds the module that fails while importing.
    checked = _cli(site, "list", "--methods", "--check")
    assert checked.returncode == 1
    assert "'broken-import' comes from plugin vispec-broken 0.1, whose module vispec_broken.broken failed to " \
           "import: ModuleNotFoundError" in checked.stdout

    # Using a broken name is one clear line naming the distribution (exit 2, no traceback) ...
    common = ["--model", "tiny-llava", "--limit", "1", "--max-new-tokens", "4", "--dtype", "float32", "--device",
              "cpu", "--no-progress", "--out", str(tmp_path / "runs")]
    for name in ("broken-import", "missing-module"):
        failed = _cli(site, "run", "--methods", name, *common)
        assert failed.returncode == 2, failed.stderr
        assert "vispec-broken 0.1" in failed.stderr and "Traceback" not in failed.stderr
    # ... while the built-ins (eagle2 is still the built-in) and the good plug-in entry work.
    ran = _cli(site, "run", "--methods", "repeat-ok,eagle2", "--method-args", "eagle2.draft=random",
               "--run-id", "ok", *common)
    assert ran.returncode == 0, ran.stderr
    records = [json.loads(line) for line in (tmp_path / "runs" / "ok" / "records.jsonl").read_text().splitlines()]
    assert [r["method"] for r in records] == ["ar", "repeat-ok", "eagle2"]
    manifest = json.loads((tmp_path / "runs" / "ok" / "manifest.json").read_text())
    classes = {m["name"]: m["class"] for m in manifest["config"]["methods"]}
    assert classes["eagle2"] == "methods.eagle2:Eagle2"


def test_duplicate_within_plugins_keeps_the_first_and_fills_the_rest(monkeypatch, capsys):
    from importlib import metadata

    from vispec_bench.plugins.registry import Registry

    group = "vispec_bench.methods"
    plugins = [metadata.EntryPoint(name="ar", value="methods.oracle:Oracle", group=group),
               metadata.EntryPoint(name="after-clash", value="methods.ar:AR", group=group)]
    monkeypatch.setattr(metadata, "entry_points", lambda group: plugins if group == "vispec_bench.methods" else [])
    registry = Registry("method")
    assert {"ar", "oracle", "eagle2", "after-clash"} <= set(registry.names())  # nothing lost after the clash
    assert registry.load("ar").__name__ == "AR"  # the built-in, registered first, is kept
    assert any("duplicate method name 'ar'" in p for p in registry.problems)
    assert "warning: duplicate method name 'ar'" in capsys.readouterr().err
    with pytest.raises(Exception, match="duplicate method name"):
        registry.register("after-clash", "methods.ar:AR")  # an explicit register() still refuses
