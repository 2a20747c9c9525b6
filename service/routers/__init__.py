"""HTTP and WebSocket routers: parse, call a service, shape the response."""
