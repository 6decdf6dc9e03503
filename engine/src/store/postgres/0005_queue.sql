-- weft's PostgreSQL run store, version 5: the queue of runs and their
-- leases. A run that is not finished has a row; the worker running it
-- holds its lease (worker, lease_until_ms on the database's clock) and
-- renews it by heartbeat. A worker that stops renewing (killed, cut off)
-- loses the lease when it passes, and any worker may then claim the row
-- (FOR UPDATE SKIP LOCKED) and resume the run. Each claim adds one to
-- fence; a commit of a run's state checks the fence it was claimed with,
-- so a worker whose lease passed to another cannot commit.
CREATE TABLE weft_queue (
    run_id text COLLATE "C" PRIMARY KEY REFERENCES weft_runs (id) ON DELETE CASCADE,
    workflow text NOT NULL,
    enqueued_ms bigint NOT NULL,
    worker text,
    lease_until_ms bigint NOT NULL DEFAULT 0,
    fence bigint NOT NULL DEFAULT 0
);
CREATE INDEX weft_queue_by_lease ON weft_queue (lease_until_ms, enqueued_ms);

-- Runs left unfinished before the queue existed are claimable at once.
INSERT INTO weft_queue (run_id, workflow, enqueued_ms)
    SELECT id, workflow, created_ms FROM weft_runs WHERE status IN ('pending', 'running');
