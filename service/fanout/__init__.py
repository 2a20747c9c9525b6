"""Fan-out: the hub, its listener, subscriptions and their queues, connections,
the process' clock (heartbeats, stalled sends, token expiry) and the table of endings (the path of an event from the
broker to a stream's writer)."""
