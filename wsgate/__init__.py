"""wsgate: a WebSocket gateway for LLM token streams."""

__version__ = "0.1.0"
