"""Flags and `--config FILE.toml` keys generated from a config dataclass (torch-free).

Resolution, lowest to highest: the dataclass defaults (or, for `run --resume`, the stored
config), then the TOML file, then the flags given on the command line. Flags that were not
given leave no value behind (argparse.SUPPRESS), so a default never overrides the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import tomllib
import types
import typing
from pathlib import Path

from vispec_bench.errors import InputError, MissingInputError


def _field_type(config_class: type, name: str) -> tuple[type, bool]:
    """(base type, optional) of a field: `int | None` -> (int, True), `list[str]` -> (list, False)."""
    kind = typing.get_type_hints(config_class)[name]
    optional = False
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        kind, optional = args[0], True
    return (typing.get_origin(kind) or kind), optional


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _flag(f: dataclasses.Field, kind: type) -> str:
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    name = f.name.replace("_", "-")
    return f"--no-{name}" if kind is bool and f.default is True else f"--{name}"


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of `config_class`, plus `--config FILE.toml`."""
    parser.add_argument("--config", metavar="FILE.toml", default=None,
                        help="read settings from a TOML file (keys are the flags' names); flags override it")
    for f in dataclasses.fields(config_class):
        if f.name in skip:
            continue
        kind, _ = _field_type(config_class, f.name)
        help_text = f.metadata.get("help", "")
        common = {"dest": f.name, "default": argparse.SUPPRESS}
        if kind is bool:
            action = "store_false" if f.default is True else "store_true"
            parser.add_argument(_flag(f, kind), action=action, help=help_text, **common)
            continue
        default = _default(f)
        if default is dataclasses.MISSING:
            shown = " (required)"
        elif default in (None, "", []):
            shown = ""
        else:
            shown = f" (default: {','.join(default) if isinstance(default, list) else default})"
        options = {"help": (help_text + shown).replace("%", "%%"), "metavar": f.metadata.get("metavar"),
                   "choices": f.metadata.get("choices")}
        if kind is list and f.metadata.get("nargs"):
            options["nargs"] = f.metadata["nargs"]
        elif kind is list:
            options["type"] = _comma_list
        else:
            options["type"] = kind
        parser.add_argument(_flag(f, kind), *f.metadata.get("aliases", ()), **options, **common)


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def given_values(args: argparse.Namespace, config_class: type) -> dict:
    """The values the user gave, file first, then flags over it."""
    names = {f.name for f in dataclasses.fields(config_class)}
    values = load_config_file(args.config, config_class) if getattr(args, "config", None) else {}
    values.update({name: value for name, value in vars(args).items() if name in names})
    return values


def build_config(config_class: type, given: dict, base: dict | None = None, command: str = ""):
    """`config_class` from `base` (default: its defaults) overridden by `given`; missing required
    fields are named with their flags."""
    values = {**(base or {}), **given}
    missing = [f for f in dataclasses.fields(config_class) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        needs = ", ".join(f"{_flag(f, str)} (or {f.name} = ... in --config)" for f in missing)
        raise InputError(f"{command or config_class.__name__} needs {needs}")
    return config_class(**values)


def load_config_file(path: str | Path, config_class: type) -> dict:
    """A flat TOML table of this command's settings, checked key by key against the dataclass."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise MissingInputError(f"--config {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"--config {path} is not valid TOML: {err}") from None
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in fields:
            close = difflib.get_close_matches(name, list(fields), n=2)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise InputError(f"--config {path}: unknown key {key!r} for this command.{hint} "
                             f"Known keys: {', '.join(fields)}")
        values[name] = _checked(config_class, fields[name], value, f"--config {path}: {key}")
    return values


def _checked(config_class: type, f: dataclasses.Field, value, where: str):
    kind, optional = _field_type(config_class, f.name)
    if kind is list:
        if isinstance(value, str):
            value = _comma_list(value)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise InputError(f"{where} must be a list of strings, got {value!r}")
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InputError(f"{where} must be {'a boolean (true/false)' if kind is bool else kind.__name__}"
                         f"{' or absent' if optional else ''}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise InputError(f"{where} must be one of {', '.join(choices)}, got {value!r}")
    return value


def differences(stored: dict, given: dict) -> dict:
    """{key: (stored value, given value)} for each given value that differs from the stored one."""
    return {key: (stored.get(key), value) for key, value in given.items() if stored.get(key) != value}


def stored_run_config(manifest: dict) -> dict:
    """The RunConfig values a run was made with, from its manifest: `run_config` (the file + flags
    resolution, recorded since it exists), else rebuilt from the resolved `config` of older runs."""
    from vispec_bench.running.config import RunConfig

    names = {f.name for f in dataclasses.fields(RunConfig)}
    if "run_config" in manifest:  # a field added since keeps its default; one removed since is dropped
        return {key: value for key, value in manifest["run_config"].items() if key in names}
    resolved = manifest["config"]
    values = {key: value for key, value in resolved.items() if key in names}
    values["methods"] = [m["name"] for m in resolved["methods"] if m["name"] != "ar"] or ["ar"]
    # Every recorded option as METHOD.KEY=VALUE, in the text --method-args parses back to it.
    values["method_args"] = [f"{m['name']}.{key}={_option_text(value)}" for m in resolved["methods"]
                             for key, value in m.get("options", {}).items()
                             if value is None or isinstance(value, (str, int, float, bool))]
    return values


def _option_text(value) -> str:
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)
