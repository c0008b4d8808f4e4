"""The mock LLM provider: deterministic, scripted provider streams over real HTTP.

Speaks four dialects, chosen by the route: OpenAI chat completions, OpenAI Responses,
Anthropic Messages and Ollama `/api/chat`, byte-faithfully, and injects the faults the
gateway must survive; a script may answer each model call of an agent loop with its own turn
and check the tool results it was sent, and the same app serves a tool backend (`tools.py`)
with faults and a count of calls. Used by the test suite, by `wsgate serve` when no provider is
configured (model `mock`), by `wsgate mock-upstream`, and by load tests. The script format is
documented in `protocol/MOCK.md`. A shell package: it imports aiohttp and its own modules,
never the core, the gateway, the upstream client, the composition root or the client library.
"""

from wsgate.mock.dialects import ROUTES
from wsgate.mock.pacer import Pacer
from wsgate.mock.plan import Dialect, Plan, PlannedEvent, RequestInfo, plan_stream
from wsgate.mock.script import Script, ScriptError, parse_script
from wsgate.mock.server import MockProvider, RequestRecord
from wsgate.mock.tools import ToolBackend, ToolRecord
from wsgate.mock.turns import ToolResult

__all__ = [
    "ROUTES",
    "Dialect",
    "MockProvider",
    "Pacer",
    "Plan",
    "PlannedEvent",
    "RequestInfo",
    "RequestRecord",
    "Script",
    "ScriptError",
    "ToolBackend",
    "ToolRecord",
    "ToolResult",
    "parse_script",
    "plan_stream",
]
