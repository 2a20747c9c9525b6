"""Transports: what turns a connection into bytes on a socket (the SSE response
and its lean front door, the WebSocket connection's reader/writer loop)."""
