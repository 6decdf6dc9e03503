-- weft's PostgreSQL run store, version 2: the finished items of for-each
-- steps, a group per commit (as sled keeps them), numbered by weft_ids so
-- they read back in commit order.

CREATE TABLE weft_items (
    run_id text COLLATE "C" NOT NULL REFERENCES weft_runs (id) ON DELETE CASCADE,
    idx integer NOT NULL,
    grp bigint NOT NULL DEFAULT nextval('weft_ids'),
    items text NOT NULL,
    PRIMARY KEY (run_id, idx, grp)
);
