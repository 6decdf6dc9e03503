-- weft's PostgreSQL run store, version 7: a run's figures per connection
-- gain what `weft run --json` prints beside the request counts: the
-- plugin, time in requests, answers by status class, plugin calls by op
-- and traps by cause. Kept as the JSON of the whole sum in `detail`; the
-- columns of version 1 stay filled, and rows written before this version
-- keep '{}' (their counts are in the columns).

ALTER TABLE weft_run_stats ADD COLUMN detail text NOT NULL DEFAULT '{}';
