"""The AsyncAPI 3 document of wsgate.v1, made from the protocol's two JSON Schemas.

Owns the one mapping from the committed schemas (`protocol/schema/*.schema.json`, made by
`core.frames.json_schemas`) to `protocol/schema/asyncapi.json`: one channel (the WebSocket
endpoint), one message per frame type, named by its `type`, whose payload is that frame's
schema, and two operations seen from the gateway: it receives the client's frames and sends
its own. The schemas' `$defs` become `components.schemas` (their `#/$defs/` references
rewritten); nothing is written by hand, so `wsgate schema --check` keeps the document in
step with the code. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

ASYNCAPI_VERSION: Final = "3.0.0"
CHANNEL: Final = "gateway"


def asyncapi_document(client: Mapping[str, Any], server: Mapping[str, Any]) -> dict[str, Any]:
    """The AsyncAPI 3 document of both directions of wsgate.v1."""
    schemas: dict[str, Any] = {}
    for side in (client, server):
        for name, schema in side["$defs"].items():
            rewritten = _rewritten(schema)
            if schemas.setdefault(name, rewritten) != rewritten:
                raise ValueError(f"the client and server schemas define {name} differently")
    messages: dict[str, Any] = {}
    received, sent = _messages(client, messages), _messages(server, messages)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "wsgate.v1",
            "version": "1",
            "description": (
                "One WebSocket (subprotocol `wsgate.v1`) carrying many generation streams, "
                "keyed by `stream_id`: JSON text frames, each with a `type`. The contract is "
                "protocol/PROTOCOL.md; this document is generated from the JSON Schemas."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "127.0.0.1:8080",
                "protocol": "ws",
                "description": "`wsgate serve` with its defaults (wss:// with server.tls_cert).",
            }
        },
        "channels": {
            CHANNEL: {
                "address": "/v1/ws",
                "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in messages},
            }
        },
        "operations": {
            "receiveClientFrame": _operation("receive", received, "A frame from the client."),
            "sendGatewayFrame": _operation("send", sent, "A frame from the gateway."),
        },
        "components": {"schemas": schemas, "messages": messages},
    }


def _messages(side: Mapping[str, Any], messages: dict[str, Any]) -> list[str]:
    """Add one message per frame type of `side` (keyed by its schema's name); their keys."""
    keys = []
    for frame_type, ref in sorted(side["discriminator"]["mapping"].items()):
        name = ref.rsplit("/", 1)[-1]
        schema = side["$defs"][name]
        message: dict[str, Any] = {
            "name": frame_type,
            "title": frame_type,
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
        if schema.get("description"):
            message["summary"] = schema["description"].split("\n", 1)[0]
        messages[name] = message
        keys.append(name)
    return keys


def _operation(action: str, keys: list[str], summary: str) -> dict[str, Any]:
    return {
        "action": action,
        "summary": summary,
        "channel": {"$ref": f"#/channels/{CHANNEL}"},
        "messages": [{"$ref": f"#/channels/{CHANNEL}/messages/{key}"} for key in keys],
    }


def _rewritten(value: Any) -> Any:
    """A schema with its `#/$defs/X` references pointing at `#/components/schemas/X`."""
    if isinstance(value, dict):
        out = {key: _rewritten(item) for key, item in value.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            out["$ref"] = "#/components/schemas/" + ref.removeprefix("#/$defs/")
        return out
    if isinstance(value, list):
        return [_rewritten(item) for item in value]
    return value
