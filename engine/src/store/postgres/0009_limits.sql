-- weft's PostgreSQL run store, version 9: one vendor limit across workers.
--
-- A row per connection identity and method class holds the limit's GCRA
-- state for the whole fleet: the theoretical arrival time of the next
-- request (`tat_us`, on the database's clock), the rate every worker
-- paces at, and a pause (a `Retry-After` seen by any worker). A worker
-- leases a few slots at a time with `weft_limit_lease`, one round trip,
-- under the row's lock; its in-process limiter hands them out. The
-- identity is a SHA-256 of the vendor, the plugin's publisher and the
-- credential's fingerprint: never the credential.

CREATE TABLE weft_limits (
    identity text COLLATE "C" NOT NULL,
    class text COLLATE "C" NOT NULL,
    -- The rate the workers start at (published, or the workflow's): a
    -- worker configured otherwise starts the row again from its own.
    configured float8 NOT NULL,
    rate float8 NOT NULL,
    -- Moves on at every change of rate: a worker's growth applies only to
    -- the rate it grew from, while a cut always applies.
    version int8 NOT NULL DEFAULT 0,
    tat_us float8 NOT NULL,
    paused_until_us float8 NOT NULL DEFAULT 0,
    PRIMARY KEY (identity, class)
);

-- Which workers leased lately: during an outage of the database each
-- falls back to its share of the rate.
CREATE TABLE weft_limit_holders (
    identity text COLLATE "C" NOT NULL,
    class text COLLATE "C" NOT NULL,
    worker text COLLATE "C" NOT NULL,
    seen_us float8 NOT NULL,
    PRIMARY KEY (identity, class, worker)
);

-- Leases `p_slots` slots (0: only records a cut or a pause) for
-- `p_worker`, none if the first would be more than `p_horizon_ms` away:
-- slots are never handed out far ahead, so a pause reaches every worker
-- before its next requests. Returns when the first slot is, in µs from
-- now (the slots follow at the returned rate), the slots granted, the
-- rate, its version, and how many workers leased in the last ten seconds.
CREATE FUNCTION weft_limit_lease(
    p_identity text,
    p_class text,
    p_worker text,
    p_slots int,
    p_configured float8,
    p_rate float8,
    p_cut boolean,
    p_grew boolean,
    p_seen int8,
    p_pause_ms float8,
    p_horizon_ms float8
) RETURNS TABLE (
    out_start_us float8, out_slots int, out_rate float8, out_version int8, out_holders int
)
LANGUAGE plpgsql AS $$
DECLARE
    now_us float8 := extract(epoch from clock_timestamp()) * 1000000;
    cur weft_limits%ROWTYPE;
    next_rate float8;
    next_version int8;
    paused float8;
    start_us float8;
    slots int := p_slots;
BEGIN
    INSERT INTO weft_limits AS l (identity, class, configured, rate, tat_us)
    VALUES (p_identity, p_class, p_configured, GREATEST(p_rate, 0.2), now_us)
    ON CONFLICT DO NOTHING;
    SELECT * INTO cur FROM weft_limits AS l
    WHERE l.identity = p_identity AND l.class = p_class FOR UPDATE;
    next_rate := cur.rate;
    IF cur.configured <> p_configured THEN
        next_rate := p_rate;
    ELSIF p_cut THEN
        next_rate := LEAST(cur.rate, p_rate);
    ELSIF p_grew AND cur.version = p_seen THEN
        next_rate := p_rate;
    END IF;
    next_rate := GREATEST(next_rate, 0.2);
    next_version := cur.version + CASE WHEN next_rate <> cur.rate THEN 1 ELSE 0 END;
    paused := cur.paused_until_us;
    IF p_pause_ms > 0 THEN
        paused := GREATEST(paused, now_us + p_pause_ms * 1000);
    END IF;
    start_us := GREATEST(cur.tat_us, now_us, paused);
    IF start_us - now_us > p_horizon_ms * 1000 THEN
        slots := 0;
    END IF;
    UPDATE weft_limits AS l
    SET configured = p_configured,
        rate = next_rate,
        version = next_version,
        tat_us = CASE WHEN slots > 0 THEN start_us + slots * 1000000 / next_rate
                      ELSE cur.tat_us END,
        paused_until_us = paused
    WHERE l.identity = p_identity AND l.class = p_class;
    INSERT INTO weft_limit_holders AS h (identity, class, worker, seen_us)
    VALUES (p_identity, p_class, p_worker, now_us)
    ON CONFLICT (identity, class, worker) DO UPDATE SET seen_us = EXCLUDED.seen_us;
    DELETE FROM weft_limit_holders AS h
    WHERE h.identity = p_identity AND h.class = p_class AND h.seen_us < now_us - 3600e6;
    RETURN QUERY
    SELECT start_us - now_us, slots, next_rate, next_version,
        (SELECT count(*)::int FROM weft_limit_holders AS h
         WHERE h.identity = p_identity AND h.class = p_class AND h.seen_us > now_us - 10e6);
END
$$;
