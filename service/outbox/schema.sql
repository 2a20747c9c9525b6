-- The transactional outbox of appointment-notify (PostgreSQL 14 and newer).
--
-- `notify outbox migrate` runs this file; teams with their own migrations can ship
-- it as one. Every statement is idempotent: running it again changes nothing.
--
-- A backend writes one row per event in the transaction that changes the
-- appointment:
--
--   INSERT INTO notify_outbox (event, idempotency_key) VALUES ($1::jsonb, $2);
--
-- `event` is the event exactly as POST /v1/events takes it; `idempotency_key` is
-- optional (the relay derives one from the row otherwise). Every other column is
-- filled in here or by the relay.
--
-- Order per patient: the insert trigger takes a transaction-level advisory lock
-- on the patient and only then draws the row's id, so a second transaction
-- writing for the same patient waits (at its INSERT) until the first one commits
-- or rolls back. Per patient, id order is therefore commit order, and a row is
-- never visible while a lower id of the same patient may still commit. The relay
-- delivers each patient's rows in id order. Across patients ids may commit out
-- of order; nothing is promised there and the relay never reads "id > last seen".
-- (Write a transaction's rows for several patients in one consistent order, e.g.
-- sorted by patient id, or two such transactions can deadlock.)

CREATE SEQUENCE IF NOT EXISTS notify_outbox_id_seq AS bigint;

CREATE TABLE IF NOT EXISTS notify_outbox (
    -- Drawn by the trigger under the patient's lock (never from the caller).
    id bigint PRIMARY KEY,
    event jsonb NOT NULL,
    idempotency_key text,
    patient_id text GENERATED ALWAYS AS (event ->> 'patient_id') STORED,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- NULL while pending; set with the history id when published.
    published_at timestamptz,
    published_id text
);

-- Rows that can never be published (invalid against the event contract), moved
-- here with the error (field paths and messages, never the values) so they no
-- longer block the rows behind them.
CREATE TABLE IF NOT EXISTS notify_outbox_dead (
    id bigint PRIMARY KEY,
    event jsonb NOT NULL,
    idempotency_key text,
    patient_id text,
    created_at timestamptz NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    reason text NOT NULL,
    error text NOT NULL
);

-- The relay's claim: each patient's oldest pending row, and pending rows by id.
CREATE INDEX IF NOT EXISTS notify_outbox_pending_patient_idx
    ON notify_outbox (patient_id, id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS notify_outbox_pending_idx
    ON notify_outbox (id) WHERE published_at IS NULL;
-- Cleanup of published rows after the retention period.
CREATE INDEX IF NOT EXISTS notify_outbox_published_idx
    ON notify_outbox (published_at) WHERE published_at IS NOT NULL;

CREATE OR REPLACE FUNCTION notify_outbox_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- 0x6e6f7466 ("notf") keeps these locks apart from the application's own
    -- two-key advisory locks; the second key is the patient's hash.
    PERFORM pg_advisory_xact_lock(1852798054, hashtext(coalesce(NEW.event ->> 'patient_id', '')));
    NEW.id := nextval('notify_outbox_id_seq');
    NEW.published_at := NULL;
    NEW.published_id := NULL;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION notify_outbox_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Delivered at COMMIT (and only then); a relay that was not listening at that
    -- moment finds the rows by polling.
    PERFORM pg_notify('notify_outbox', '');
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER notify_outbox_before_insert BEFORE INSERT ON notify_outbox
    FOR EACH ROW EXECUTE FUNCTION notify_outbox_before_insert();

CREATE OR REPLACE TRIGGER notify_outbox_after_insert AFTER INSERT ON notify_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox_after_insert();
