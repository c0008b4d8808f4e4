"""The mock LLM provider: deterministic, scripted OpenAI chat-completions SSE over real HTTP.

Used by the test suite, by `wsgate serve` when no provider is configured (model `mock`), by
`wsgate mock-upstream`, and by load tests. The script format is documented in
`protocol/MOCK.md`. A shell package: it may import aiohttp and `wsgate.core`, never the
gateway, the upstream client, the composition root or the client library.
"""

from wsgate.mock.pacer import Pacer
from wsgate.mock.script import PlannedEvent, Script, ScriptError, parse_script, plan_events
from wsgate.mock.server import MockProvider, RequestRecord

__all__ = [
    "MockProvider",
    "Pacer",
    "PlannedEvent",
    "RequestRecord",
    "Script",
    "ScriptError",
    "parse_script",
    "plan_events",
]
