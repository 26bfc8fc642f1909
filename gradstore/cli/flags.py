"""Command-line flags generated from the config dataclasses (``gradstore.config``).

Each field becomes one flag named after it (``proj_dim`` -> ``--proj-dim``, unless the
field names another), with the field's help, default, choices and parser. Fields of the
same name in one command's config tree share one flag, which sets all of them.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING
from typing import Any

from gradstore.config import from_options, leaves
from gradstore.errors import GradstoreError


def flag_name(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = (),
                     group: str | None = None) -> list[str]:
    """Add a flag per field of ``cls``'s config tree (but ``skip``); returns the field names."""
    target = parser.add_argument_group(group) if group else parser
    seen: list[str] = []
    for _, f in leaves(cls):
        if f.name in seen or f.name in skip or not f.metadata.get("cli", True):
            continue
        seen.append(f.name)
        kw = _argument(f)
        if f.metadata.get("positional"):
            kw.pop("required")
            target.add_argument(kw.pop("dest"), **kw)
        else:
            target.add_argument(flag_name(f), **kw)
    return seen


def _argument(f) -> dict[str, Any]:
    meta = f.metadata
    kw: dict[str, Any] = {"dest": f.name}
    required = f.default is MISSING and f.default_factory is MISSING
    default = None if required or f.default is MISSING else f.default
    text = meta.get("help", "")
    if meta.get("negate"):
        return kw | {"action": "store_false", "default": default, "help": text}
    if f.type in (bool, "bool"):
        return kw | {"action": "store_true", "default": default, "help": text}
    parse = meta.get("parse")
    if parse is not None:
        kw["type"] = _argparse_type(parse)
    elif f.type in ("int", "int | None"):
        kw["type"] = int
    elif f.type in ("float", "float | None"):
        kw["type"] = float
    if meta.get("choices"):
        kw["choices"] = meta["choices"]
    if meta.get("metavar"):
        kw["metavar"] = meta["metavar"]
    if meta.get("many"):
        kw["nargs"] = "+"
    if meta.get("repeat"):
        kw["action"] = "append"
        kw["default"] = None  # the field's default applies when the flag is not given
    else:
        kw["default"] = default
        shown = default is not None and default is not False and default != ()
        if shown and "default" not in text:
            text = f"{text} (default {default})"
    kw["required"] = required
    return kw | {"help": text}


def _argparse_type(parse):
    """argparse reports a ValueError/GradstoreError of the parser as a usage error."""
    def convert(text: str):
        try:
            return parse(text)
        except (ValueError, GradstoreError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any):
    """A ``cls`` config from parsed flags (and ``overrides``, by field name)."""
    names = {path[-1] for path, _ in leaves(cls)}
    options = {}
    for name in names:
        value = getattr(args, name, None)
        if value is None:
            continue
        options[name] = tuple(value) if isinstance(value, list) else value
    return from_options(cls, **(options | overrides))
