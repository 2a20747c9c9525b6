"""Transports: what turns a connection into bytes on a socket (the SSE response
and its lean front door; the streams that own their sockets once admitted,
`sse_stream.py` and `ws_stream.py`; the WebSocket session and its frame handlers)."""
