"""The WebSocket shell: the server, one connection (reader, writer, stream tasks) per client.

`server.py` listens and shuts down; `connection.py` runs a client; `writer.py` writes its
frames; `stream_task.py` runs each stream's provider call; `ports.py` names what the
shell needs from outside (the upstream, and the store and authenticator to come).
"""
