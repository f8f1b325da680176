"""Command-line options derived from a dataclass: one declaration per option.

A field of a config dataclass is declared once, with its documentation in the string below it
(an attribute docstring) and its section in a ``# ---- name`` comment above a group of fields::

    # ------------------------------------------------------------------ optimization
    epochs: int = 10
    \"\"\"Passes over the training split.\"\"\"

:func:`add_options` turns such fields into ``argparse`` options: the flag from the name
(``batch_size`` → ``--batch-size``), the type, choices (``Literal``), on/off switches (``bool``,
``bool | None``), lists (``tuple[int, ...]``), ``START END`` pairs, and the help from the
docstring followed by the default. Every option defaults to ``argparse.SUPPRESS``, so an unset
flag stays unset and a config file or the dataclass default shows through.
Standard library only (no import cost at ``--help`` time).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import re
import textwrap
import types
import typing

__all__ = ["field_docs", "add_options", "set_values", "parse_pair", "parse_value",
           "PairAction"]

_SECTION = re.compile(r"^\s*#\s*-{3,}\s*(.+?)\s*$")
_FIELD = re.compile(r"^\s*(\w+)\s*:")


@functools.cache
def field_docs(cls) -> dict[str, tuple[str, str]]:
    """``{field: (section, doc)}`` of a dataclass, from its source: the string under each field
    and the ``# ---- section`` comment above it ("options" before any)."""
    source = textwrap.dedent(inspect.getsource(cls))
    docs: dict[str, str] = {}
    body = ast.parse(source).body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None),
                                                         ast.Constant) \
                and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    sections, section = {}, "options"
    for line in source.splitlines():
        if m := _SECTION.match(line):
            section = m.group(1)
        elif (m := _FIELD.match(line)) and m.group(1) in docs:
            sections.setdefault(m.group(1), section)
    return {name: (sections.get(name, "options"), doc) for name, doc in docs.items()}


def parse_value(text: str):
    """A command-line value: ``none`` → None, ``A:B`` → a pair of numbers, JSON (numbers, true,
    lists) when it is JSON, else the text."""
    low = text.strip().lower()
    if low in ("none", "null", "off"):
        return None
    if ":" in text:
        try:
            return tuple(float(p) for p in text.split(":"))
        except ValueError:
            pass
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pair(text: str):
    """``"1,30"``, ``"1:30"`` or ``"1 30"`` → (1.0, 30.0); ``"none"`` → None; ``"auto"`` → "auto"."""
    low = text.strip().lower()
    if low in ("none", "off", "null"):
        return None
    if low == "auto":
        return "auto"
    parts = re.split(r"[,:\s]+", text.strip())
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected START END (or START,END) or none, got {text!r}")
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers START END, got {text!r}") from None


class PairAction(argparse.Action):
    """``--flag 1 30``, ``--flag 1,30``, ``--flag none`` (or ``auto``) → :func:`parse_pair`."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, parse_pair(" ".join(values)))
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentError(self, str(e)) from None


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return " ".join(_show(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _parts(tp) -> tuple[list, bool]:
    """The non-None members of a union annotation, and whether None is one."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = typing.get_args(tp)
        return [a for a in args if a is not type(None)], type(None) in args
    return [tp], False


def _nullable(convert):
    """``convert``, except that ``none`` (or ``null``) gives None."""
    def parse(text: str):
        return None if text.strip().lower() in ("none", "null") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")    # argparse names it in errors
    return parse


def _kind(tp) -> dict:
    """argparse keywords for a field's annotation."""
    parts, optional = _parts(tp)
    first = parts[0]
    if optional and first in (int, float, str):
        return {"type": _nullable(first)}
    if typing.get_origin(first) is typing.Literal:
        return {"choices": typing.get_args(first)}
    if first is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(first) is tuple:
        args = typing.get_args(first)
        if len(args) == 2 and args[1] is not Ellipsis:      # (start, end)
            return {"action": PairAction}
        return {"nargs": "+", "type": args[0]}
    if first in (int, float):
        return {"type": first}
    return {}


def add_options(parser, cls, names, *, defaults: dict | None = None,
                flags: dict | None = None, metavars: dict | None = None,
                groups: dict | None = None, prefix: str = "") -> dict:
    """Add an option for each field of ``cls`` in ``names`` to ``parser``, in argument groups
    named by ``prefix`` + the fields' sections (:func:`field_docs`); ``groups`` (section →
    group) is filled and may hold groups already. ``defaults`` overrides the defaults shown in
    the help; ``flags`` renames flags (``{"out_dir": "out"}``). Returns ``groups``."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    groups = {} if groups is None else groups
    for name in names:
        f = fields[name]
        section, doc = docs.get(name, ("options", ""))
        section = prefix + section
        if section not in groups:
            groups[section] = parser.add_argument_group(section)
        own = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        default = (defaults or {}).get(name, own)
        if default is None and own is not None:      # an override to None means something
            shown = " (default: none)"
        else:
            shown = f" (default: {_show(default)})" if default not in (None, (), [], {}) else ""
        flag = "--" + (flags or {}).get(name, name).replace("_", "-")
        kw = _kind(hints[name])
        if (metavars or {}).get(name):
            kw["metavar"] = metavars[name]
        groups[section].add_argument(flag, dest=name, default=argparse.SUPPRESS,
                                     help=(doc + shown).replace("%", "%%"), **kw)
    return groups


def set_values(args: argparse.Namespace, names) -> dict:
    """The fields among ``names`` that were given on the command line."""
    return {n: getattr(args, n) for n in names if hasattr(args, n)}
