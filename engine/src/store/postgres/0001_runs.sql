-- weft's PostgreSQL run store, version 1: runs, their steps, webhook
-- deliveries seen, history, HTTP totals, tokens and sessions.
--
-- Records are stored as the same JSON text the sled store keeps (text, not
-- jsonb, so a record reads back byte for byte); the columns beside them are
-- what lists filter and order on. Run ids are compared bytewise (COLLATE
-- "C"): they start with the creation time in hex, so id order is time
-- order, as in sled.

CREATE SEQUENCE weft_ids;

CREATE TABLE weft_runs (
    id text COLLATE "C" PRIMARY KEY,
    workflow text NOT NULL,
    status text NOT NULL,
    trigger text NOT NULL,
    dry_run boolean NOT NULL,
    created_ms bigint NOT NULL,
    finished_ms bigint,
    error text,
    resumes integer NOT NULL,
    cancel_requested boolean NOT NULL,
    started_by text,
    record text NOT NULL
);
CREATE INDEX weft_runs_by_workflow ON weft_runs (workflow, id);
CREATE INDEX weft_runs_by_status ON weft_runs (status, id);
CREATE INDEX weft_runs_by_trigger ON weft_runs (trigger, id);

CREATE TABLE weft_steps (
    run_id text COLLATE "C" NOT NULL REFERENCES weft_runs (id) ON DELETE CASCADE,
    idx integer NOT NULL,
    state text NOT NULL,
    PRIMARY KEY (run_id, idx)
);

-- A delivery is remembered exactly when its run exists (same transaction);
-- the primary key refuses a replay on every worker at once.
CREATE TABLE weft_deliveries (
    workflow text NOT NULL,
    signature text NOT NULL,
    signed_at bigint,
    run_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (workflow, signature)
);

CREATE TABLE weft_history (
    run_id text COLLATE "C" NOT NULL REFERENCES weft_runs (id) ON DELETE CASCADE,
    seq bigint NOT NULL DEFAULT nextval('weft_ids'),
    entry text NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE weft_run_stats (
    run_id text COLLATE "C" NOT NULL REFERENCES weft_runs (id) ON DELETE CASCADE,
    connection text NOT NULL,
    requests bigint NOT NULL,
    throttled bigint NOT NULL,
    retries bigint NOT NULL,
    waited_ms bigint NOT NULL,
    denied bigint NOT NULL,
    PRIMARY KEY (run_id, connection)
);

CREATE TABLE weft_tokens (
    id text PRIMARY KEY,
    name text NOT NULL,
    created_ms bigint NOT NULL,
    revoked_ms bigint,
    record text NOT NULL
);
-- One active token per name, on every worker at once.
CREATE UNIQUE INDEX weft_tokens_active_name ON weft_tokens (name) WHERE revoked_ms IS NULL;

CREATE TABLE weft_sessions (
    cookie_sha256 text PRIMARY KEY,
    token_id text NOT NULL,
    expires_ms bigint NOT NULL,
    record text NOT NULL
);
CREATE INDEX weft_sessions_by_token ON weft_sessions (token_id);
