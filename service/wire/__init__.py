"""What goes on the wire: SSE blocks (`sse.py`) and WebSocket message text (`ws.py`),
built here and nowhere else. Nothing in this package decides anything; it imports
no other module of the service (the hub and the writers hand it what to frame)."""
