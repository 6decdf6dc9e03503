-- weft's PostgreSQL run store, version 3: webhook event ids. A sender's
-- retry of an event is signed anew, so the signature cannot tell it from
-- a new event; the id can. Remembered with the run, in one transaction,
-- until keep_until_ms; the primary key refuses a second delivery of an id
-- on every worker at once.

CREATE TABLE weft_delivery_events (
    workflow text NOT NULL,
    event_id text NOT NULL,
    keep_until_ms bigint NOT NULL,
    run_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (workflow, event_id)
);
