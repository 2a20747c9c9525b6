"""Fan-out: the hub, its listener, subscriptions and their queues, connections,
the keep-alive clock and the table of endings (the path of an event from the
broker to a stream's writer)."""
