"""The route table of the mock provider: which dialect answers which `POST` path.

The route decides the dialect; nothing in the request body does. Adding a dialect is one
module implementing `wsgate.mock.plan.Dialect` and one row here (and its section in
protocol/MOCK.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from wsgate.mock.anthropic import ANTHROPIC
from wsgate.mock.ollama import OLLAMA
from wsgate.mock.openai_chat import OPENAI_CHAT
from wsgate.mock.openai_responses import OPENAI_RESPONSES

if TYPE_CHECKING:
    from collections.abc import Mapping

    from wsgate.mock.plan import Dialect

ROUTES: Final[Mapping[str, Dialect]] = {
    "/v1/chat/completions": OPENAI_CHAT,
    "/v1/responses": OPENAI_RESPONSES,
    "/v1/messages": ANTHROPIC,
    "/api/chat": OLLAMA,
}
