"""What every provider's request-body builder checks the same way.

Owns the rules of wsgate's request (the OpenAI chat-completions shape) that hold whatever
the provider, so that no builder drops a field the others refuse:
1. Only assistant messages carry `tool_calls`; only tool messages carry `tool_call_id`.
   Anywhere else the field would be dropped by the translation: `bad_request`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsgate.core.errors import BadRequest

if TYPE_CHECKING:
    from wsgate.core.frames import Message


def check_message(message: Message, where: str) -> None:
    """Refuse fields the message's role cannot carry (rule 1)."""
    if message.tool_calls is not None and message.role != "assistant":
        raise BadRequest(f"{where}.tool_calls: only assistant messages make tool calls")
    if message.tool_call_id is not None and message.role != "tool":
        raise BadRequest(f"{where}.tool_call_id: only tool messages answer a tool call")
