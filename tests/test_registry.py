import subprocess
import sys
from importlib import metadata

import pytest

from vispec_bench.plugins.registry import METHODS, Registry, RegistryError


def test_list_command_does_not_import_torch():
    code = ("import sys; from vispec_bench.cli import main; main(['list']); "
            "assert 'torch' not in sys.modules, 'list imported torch'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "oracle" in out.stdout and "tiny-qwen25vl" in out.stdout and out.stdout.strip().endswith("ok")


def test_unknown_method_gets_did_you_mean():
    with pytest.raises(RegistryError, match="Did you mean 'oracle'"):
        METHODS.get("oracel")


def test_duplicate_name_is_an_error():
    registry = Registry("method")
    registry.register("ar", "methods.ar:AR")
    with pytest.raises(RegistryError, match="duplicate method name 'ar'"):
        registry.register("ar", "other.module:AR")
    with pytest.raises(RegistryError, match="duplicate method name 'ar'"):
        registry.register("baseline", "methods.ar:AR", aliases=("ar",))


def test_aliases_resolve_to_the_entry():
    from vispec_bench.plugins.registry import SUITES

    assert SUITES.get("easy-vqa").name == "easyvqa"


def test_plugins_register_through_entry_points(monkeypatch):
    registry = Registry("method")
    plugin = metadata.EntryPoint(name="myspec", value="methods.ar:AR", group="vispec_bench.methods")

    def fake_entry_points(group):
        return [plugin] if group == "vispec_bench.methods" else []

    monkeypatch.setattr(metadata, "entry_points", fake_entry_points)
    assert "myspec" in registry.names()
    assert registry.load("myspec").__name__ == "AR"
    assert registry.get("myspec").source.startswith("plugin")


def test_ablations_are_found_by_the_method_they_ablate():
    registry = Registry("method")
    registry.register("spec", "methods.ar:AR")
    registry.register("spec-small", "methods.ar:AR", preset={"size": 1}, ablation_of="spec")
    registry.register("other", "methods.ar:AR")
    assert registry.ablations_of(["spec"]) == ["spec-small"] and registry.ablations_of(["other"]) == []
    assert registry.get("spec-small").preset == {"size": 1}


def test_run_ablations_adds_every_registered_ablation_of_the_runs_methods(monkeypatch):
    from vispec_bench.cli import build_parser, run_config_from_args
    from vispec_bench.plugins.registry import Entry

    def methods_run(*flags):
        return run_config_from_args(build_parser().parse_args(["run", *flags])).methods

    # a third-party ablation of a method: the CLI needs no name of it
    monkeypatch.setitem(METHODS._entries, "oracle-deep",
                        Entry("oracle-deep", "methods.oracle:Oracle", preset={"depth": 8}, ablation_of="oracle"))
    assert methods_run("--methods", "oracle,vispec", "--ablations") == [
        "oracle", "vispec", "oracle-deep", "vispec-noadaptor", "vispec-noglobal"]
    assert methods_run("--methods", "eagle2", "--ablations") == ["eagle2"]
    assert methods_run("--methods", "oracle,vispec") == ["oracle", "vispec"]


def test_every_family_names_a_registered_tiny_model_of_its_class(capsys):
    """`list --models` lists each loadable family with the tiny model that tests it; that model is
    registered and is of the family's HF class (a family row pointing at the wrong model is red)."""
    from vispec_bench.cli import main
    from vispec_bench.models.families import FAMILIES
    from vispec_bench.models.loading import SUPPORTED_MODEL_TYPES
    from vispec_bench.plugins.registry import MODELS

    assert SUPPORTED_MODEL_TYPES == {family.model_type: family.hf_class for family in FAMILIES}
    main(["list", "--models"])
    out = capsys.readouterr().out
    for family in FAMILIES:
        assert f"  {family.model_type} " in out
        if family.tiny:
            assert family.hf_class in MODELS.get(family.tiny).summary, (family.model_type, family.tiny)
