"""Provider knowledge: one module per provider kind, collected in one registry.

Each kind's module holds its translator (provider events in, provider-neutral events out),
its request body (or imports it from the kind's `*_request` module) and its `KIND` row with
the HTTP details; `registry.py` lists the kinds; `base.py` holds what they share. The names
below are the package's interface.
"""

from __future__ import annotations

from wsgate.core.providers.base import ProviderHTTP, ProviderKind
from wsgate.core.providers.registry import KIND_NAMES, KINDS, build_body, kind, make_parser

__all__ = [
    "KINDS",
    "KIND_NAMES",
    "ProviderHTTP",
    "ProviderKind",
    "build_body",
    "kind",
    "make_parser",
]
