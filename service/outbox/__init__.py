"""The PostgreSQL transactional outbox: the table (`schema.sql`, `notify outbox
migrate`) and the relay that publishes its rows (`notify relay`, or a task of
`notify serve` with `NOTIFY_OUTBOX_RELAY_ENABLED=true`)."""
