-- weft's PostgreSQL run store, version 6: cron firings, one row per
-- workflow and scheduled time, written with the run the firing starts (one
-- transaction). Every worker's scheduler fires; the primary key lets one
-- of them start the run and the others start nothing.
CREATE TABLE weft_cron_firings (
    workflow text NOT NULL,
    scheduled_ms bigint NOT NULL,
    run_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (workflow, scheduled_ms)
);
