-- weft's PostgreSQL run store, version 4: what a list step has read and a
-- sync's sorted runs, so that a run resumes on any worker with nothing
-- from another worker's disk.
--
-- A list step's pages, each the JSON array of records the connector
-- returned, committed with the step's state (its cursor) in one
-- transaction.
CREATE TABLE weft_pages (
    run_id text COLLATE "C" NOT NULL REFERENCES weft_runs (id) ON DELETE CASCADE,
    idx integer NOT NULL,
    page integer NOT NULL,
    records text NOT NULL,
    PRIMARY KEY (run_id, idx, page)
);

-- A sync's sorted runs: a worker writes each to its own disk to merge, and
-- stores it here with the step's progress in one transaction; a worker
-- that resumes the run fetches what its disk lacks.
CREATE TABLE weft_sorted_runs (
    run_id text COLLATE "C" NOT NULL REFERENCES weft_runs (id) ON DELETE CASCADE,
    idx integer NOT NULL,
    name text NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (run_id, idx, name)
);
