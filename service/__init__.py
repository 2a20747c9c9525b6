"""Real-time appointment notifications over SSE and WebSocket."""
