r"""Strict JSON parsing of provider payloads, tolerant of lone-surrogate escapes.

Owns the one way the core reads provider JSON: orjson first (fast), and the standard library
when orjson refuses, which it does for escaped lone surrogates (`"\ud83d"`): valid JSON that
providers send when they split a surrogate pair across two events. `NaN` and `Infinity` are
refused (they are not JSON), and nesting too deep for the parser is a `ValueError` like any
other malformed input. No I/O.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from wsgate.core.utf8 import scrub_value


def loads(text: str, *, scrub: bool = False) -> Any:
    """Parse strict JSON; raise ValueError otherwise.

    Lone surrogates from escapes are kept (a `SurrogateJoiner` may still pair them), unless
    `scrub`: then every one becomes U+FFFD and the value always encodes as UTF-8.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nests too deeply") from None
    return scrub_value(value) if scrub else value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
