"""The WebSocket shell: the websockets server and one reader/writer pair per connection."""
