import pytest

from methods.oracle import Oracle
from vispec_bench.plugins.method import build_method, parse_method_args


def test_method_args_are_typed_by_the_options_dataclass():
    raw = parse_method_args(["oracle.depth=6", "oracle.wrong=false"], ["ar", "oracle"])
    method = build_method(Oracle, "oracle", raw["oracle"])
    assert method.options.depth == 6 and method.options.wrong is False


def test_boolean_options_are_strict_so_false_never_means_true():
    with pytest.raises(ValueError, match="boolean"):
        build_method(Oracle, "oracle", {"wrong": "Flase"})
    assert build_method(Oracle, "oracle", {"wrong": "True"}).options.wrong is True


def test_unknown_option_suggests_the_close_one():
    with pytest.raises(ValueError, match="Did you mean depth"):
        build_method(Oracle, "oracle", {"dept": "3"})


def test_method_args_for_a_method_not_in_the_run_are_rejected():
    with pytest.raises(ValueError, match="not in this run"):
        parse_method_args(["eagle2.depth=5"], ["ar", "oracle"])
    with pytest.raises(ValueError, match="METHOD.KEY=VALUE"):
        parse_method_args(["depth=5"], ["ar", "oracle"])


def test_config_hash_changes_with_options():
    a = build_method(Oracle, "oracle", {"depth": "3"})
    b = build_method(Oracle, "oracle", {"depth": "4"})
    assert a.config_hash() != b.config_hash()
    assert a.config_hash() == build_method(Oracle, "oracle", {"depth": "3"}).config_hash()
