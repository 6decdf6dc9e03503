-- weft's PostgreSQL run store, version 8: each workflow's state across
-- runs (`[state.NAME]`). A step's change is written in the transaction
-- that commits the step, after `SELECT … FOR UPDATE` of this row, so two
-- workers cannot both advance it from the same version.

CREATE TABLE weft_workflow_state (
    workflow text COLLATE "C" PRIMARY KEY,
    state text NOT NULL
);
