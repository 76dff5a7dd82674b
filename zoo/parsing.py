"""Bounded parsers for what the zoo reads from files it did not write: JSON (checkpoint configs, reports,
tensor metas, recipes) and YAML (recipes).

Every failure is the caller's typed error (a `zoo.errors.ZooError` subclass), in one line: bytes that are
not UTF-8, text over `max_bytes`, nesting deeper than `max_depth` (checked on the text before any parser
recurses, so no RecursionError), JSON numbers Python will not read (ints of more than 4,300 digits), and
for YAML any anchor or alias: a recipe never needs them, and nested aliases ("billion laughs") make a tiny
file expand without bound.
"""
from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import yaml

from zoo.errors import ZooError

MAX_DEPTH = 32  # deeper than any file the zoo writes (a checkpoint config nests 5 levels)
MAX_BYTES = 16 << 20  # configs, reports and recipes are a few KB; tensor metas ~100 bytes per tensor

_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)  # linear: no nested quantifier can backtrack
_OPEN, _CLOSE = np.frombuffer(b"[{", np.uint8), np.frombuffer(b"]}", np.uint8)


def _text(data: str | bytes, what: str, error: type[ZooError], max_bytes: int) -> str:
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    if size > max_bytes:
        raise error(f"{what} is {size} bytes, more than the {max_bytes} a zoo file may hold")
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{what} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def nesting_depth(text: str, strings: re.Pattern[str] = _JSON_STRING) -> int:
    """The deepest nesting of [ ] and { } in `text`, outside the strings `strings` matches."""
    raw = np.frombuffer(strings.sub('""', text).encode("utf-8", "surrogatepass"), np.uint8)
    steps = np.isin(raw, _OPEN).astype(np.int64) - np.isin(raw, _CLOSE)
    return int(np.cumsum(steps).max(initial=0))


def load_json(data: str | bytes, *, what: str, error: type[ZooError], max_depth: int = MAX_DEPTH,
              max_bytes: int = MAX_BYTES) -> Any:
    """`data` (UTF-8 bytes or text) parsed as JSON, within `max_bytes` and `max_depth`; `error(...)`
    naming `what` otherwise. NaN and infinities are refused (the zoo writes none)."""
    text = _text(data, what, error, max_bytes)
    depth = nesting_depth(text)
    if depth > max_depth:
        raise error(f"{what} nests {depth} levels deep, more than the {max_depth} a zoo file may")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as err:  # JSONDecodeError, a number of too many digits, NaN / Infinity
        raise error(f"{what} is not valid JSON: {err}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# YAML: a block document's nesting is also its indentation; flow collections use [ ] and { } as JSON does.
_YAML_SCALAR = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"\\]|\\.)*\"|#[^\n]*", re.S)


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing anchors and aliases while composing (before any expansion) and
    bounding the nesting of collections."""

    max_depth = MAX_DEPTH

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"aliases are not allowed (alias *{event.anchor} at {event.start_mark})")
        event = self.peek_event()
        if getattr(event, "anchor", None) is not None:
            raise yaml.YAMLError(f"anchors are not allowed (anchor &{event.anchor} at {event.start_mark})")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > self.max_depth:
                raise yaml.YAMLError(f"the document nests more than {self.max_depth} levels ({event.start_mark})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(data: str | bytes, *, what: str, error: type[ZooError], max_depth: int = MAX_DEPTH,
              max_bytes: int = MAX_BYTES) -> Any:
    """`data` parsed as YAML by the safe loader, within `max_bytes` and `max_depth`, with no anchors or
    aliases; `error(...)` naming `what` otherwise."""
    text = _text(data, what, error, max_bytes)
    depth = nesting_depth(text, _YAML_SCALAR)
    if depth > max_depth:  # flow collections ([[[...]]]): refused before PyYAML's recursive composer sees them
        raise error(f"{what} nests {depth} levels deep, more than the {max_depth} a zoo file may")
    loader = None
    try:
        loader = _NoAliasLoader(text)  # its reader refuses control characters here (a YAMLError)
        loader.max_depth = max_depth
        return loader.get_single_data()
    except (yaml.YAMLError, ValueError, OverflowError) as err:  # ValueError: a date like 2020-13-01
        raise error(f"{what} is not valid YAML for the zoo: {' '.join(str(err).split())}"[:400]) from None
    finally:
        if loader is not None:
            loader.dispose()
