-- adtally's tables. Applied idempotently by clickhouse/install.py:
-- {db} is the database (default `adtally`).
-- Times are DateTime64(3, 'UTC'): event time in milliseconds, as the core uses.

CREATE DATABASE IF NOT EXISTS {db};

-- Filters (the star schema's dimensions). Filter 0, all clicks, is built in.
CREATE TABLE IF NOT EXISTS {db}.filters
(
    filter_id  UInt32,                                   -- 1 or more; the id rollups carry
    name       String,                                   -- for people
    spec       String,                                   -- the core's FilterSpec as JSON (country / ip / user_id lists)
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)     -- the newest spec of an id wins
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY filter_id;

-- Raw events: every valid click record as it came, once per source
-- position (a click sent twice is two rows with one event key; a record
-- written again after a crash replaces its row). The batch truth counts
-- distinct event keys; reconciliation reads the positions (which of a
-- key's records the stream counted); replay reads the payloads, in each
-- partition's order, with batch_invalid_events' records.
-- Retention counts from arrival (old clicks may be backfilled): rows move to
-- the `cold` volume after 30 days where the storage policy `adtally_tiered`
-- exists (see install.py), and are deleted after 400 days.
CREATE TABLE IF NOT EXISTS {db}.raw_events
(
    event_key         FixedString(32),                   -- the core's EventKey, 32 hex digits
    ad_id             String,
    click_ts          DateTime64(3, 'UTC'),              -- event time
    user_id           String,
    ip                String,                            -- canonical text (IPv4-mapped IPv6 as IPv4)
    country           LowCardinality(String),            -- ISO 3166-1 alpha-3
    event_id          String,                            -- the producer's id, '' when none
    window_start      DateTime64(3, 'UTC'),              -- the core's window of click_ts
    filter_ids        Array(UInt32),                     -- every filter the click matches, 0 first
    semantics_version UInt32,                            -- of the module that parsed it
    topic             LowCardinality(String),
    source_partition  UInt32,
    source_offset     Int64,
    record_time_ms    Nullable(Int64),                   -- the Kafka record's timestamp, NULL when none
    payload           String CODEC(ZSTD(1)),             -- the record as received
    ingested_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toDate(click_ts)
ORDER BY (ad_id, window_start, event_key, topic, source_partition, source_offset)
TTL toDateTime(ingested_at) + INTERVAL 400 DAY DELETE;

-- Per-minute rollups written by the host: one row per (window, ad, filter,
-- topic, source partition, module) and version. A window re-emitted after a
-- late click has a higher version and replaces the earlier row; read through
-- clicks_per_minute (argMax) to be exact before and after merges. Rows of
-- two modules are both kept; where both wrote the same version of a cell,
-- the one of the greater module_sha256 counts (a fixed order, never the
-- order of insertion).
CREATE TABLE IF NOT EXISTS {db}.rollups
(
    window_start     DateTime64(3, 'UTC'),
    ad_id            String,
    filter_id        UInt32,
    topic            LowCardinality(String),
    source_partition UInt32,
    clicks           UInt64,                             -- distinct clicks
    version          UInt32,                             -- the highest is the count
    module_sha256    LowCardinality(String),             -- SHA-256 (hex) of the module that computed it
    written_at       DateTime64(3, 'UTC') DEFAULT now64(3),
    rollup_set       LowCardinality(String),             -- '' the live stream's; a replay's own (see rollup_sets)
    -- A host of the schema before topics would write '' and count twice.
    CONSTRAINT topic_named CHECK topic != ''
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (ad_id, window_start, filter_id, topic, source_partition, module_sha256, rollup_set);

-- Which rollups readers see: for each (topic, window), the newest active
-- replay set of that topic whose range holds it, else the live stream's
-- (''). Switching a range to a replay is one insert here, so a query sees
-- the switch whole or not at all (it reads this table once); the set it
-- replaced stays in the tables, queryable through *_by_set, until
-- `adtally replay drop`.
CREATE TABLE IF NOT EXISTS {db}.rollup_sets
(
    rollup_set    String,                                -- the name its rows carry
    range_from    DateTime64(3, 'UTC'),                  -- the first window it holds
    range_to      DateTime64(3, 'UTC'),                  -- the first window it does not
    topic         String,                                -- the topic it holds
    module_sha256 String,                                -- the module that computed it
    config_json   String,                                -- the core's configuration it ran with
    state         LowCardinality(String),                -- building, ready, failed, active, dropped
    revision      UInt32,                                -- the highest is the set's state
    changed_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(revision)
ORDER BY rollup_set;

-- The active sets, newest first: a (topic, window)'s set is the first of
-- its topic whose range holds it (arrayFirst), else ''.
CREATE OR REPLACE VIEW {db}.active_rollup_sets AS
SELECT arrayMap(s -> (s.1, s.2, s.3, s.4),
                arrayReverseSort(s -> (s.5, s.1), groupArray((rollup_set, topic, range_from, range_to, changed_at)))) AS sets
FROM {db}.rollup_sets FINAL
WHERE state = 'active';

-- Each (set, topic, partition)'s exact count of a cell: its highest
-- version (of two modules' rows of one version, the greater module_sha256).
CREATE OR REPLACE VIEW {db}.rollup_cells AS
SELECT rollup_set, window_start, ad_id, filter_id, topic, source_partition,
       argMax(clicks, (version, module_sha256)) AS clicks,
       max((version, module_sha256)).2 AS counted_by
FROM {db}.rollups
GROUP BY rollup_set, window_start, ad_id, filter_id, topic, source_partition;

-- Every set's counts (the live stream's is ''), summed over its partitions.
CREATE OR REPLACE VIEW {db}.clicks_per_minute_by_set AS
SELECT rollup_set, window_start, ad_id, filter_id, sum(clicks) AS clicks, groupUniqArray(counted_by) AS modules
FROM {db}.rollup_cells
GROUP BY rollup_set, window_start, ad_id, filter_id;

-- The counts readers see: each (topic, window)'s from the set in force for
-- it, summed over topics and partitions.
CREATE OR REPLACE VIEW {db}.clicks_per_minute AS
WITH (SELECT sets FROM {db}.active_rollup_sets) AS active
SELECT window_start, ad_id, filter_id, sum(clicks) AS clicks, groupUniqArray(counted_by) AS modules
FROM {db}.rollup_cells
WHERE rollup_set = arrayFirst(s -> s.2 = topic AND window_start >= s.3 AND window_start < s.4, active).1
GROUP BY window_start, ad_id, filter_id;

-- Top-N (the design's most_clicked_ads), one list per (topic, partition,
-- module) and version, the same tie-break as rollups; lists of hosts
-- reading disjoint ad sets merge exactly with adtally_merge_top_n.
CREATE TABLE IF NOT EXISTS {db}.most_clicked_ads
(
    window_minutes     UInt32,                           -- M
    update_time_minute DateTime64(3, 'UTC'),             -- the last minute included
    filter_id          UInt32,
    topic              LowCardinality(String),
    source_partition   UInt32,                           -- the partition ranked: see top_ads for all
    version            UInt32,                           -- revisions after an idle partition caught up
    most_clicked_ads   Array(Tuple(String, UInt64)),     -- (ad_id, clicks), best first
    module_sha256      LowCardinality(String),
    written_at         DateTime64(3, 'UTC') DEFAULT now64(3),
    rollup_set         LowCardinality(String),             -- as in rollups
    CONSTRAINT topic_named CHECK topic != ''
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (window_minutes, update_time_minute, filter_id, topic, source_partition, module_sha256, rollup_set);

-- The core's state per source partition, tied to the offset it covers: a
-- consumer that takes the partition over (after a restart or a rebalance)
-- restores it and replays only the records from next_offset on. Written only
-- after every row of the records before next_offset was acknowledged. Kept
-- per semantics version: a module of another version never merges away the
-- state of this one (install.py migrates tables keyed without it).
CREATE TABLE IF NOT EXISTS {db}.snapshots
(
    topic             String,
    source_partition  UInt32,
    next_offset       Int64,                             -- the first record not in the state
    semantics_version UInt32,                            -- a module restores only its own
    module_sha256     LowCardinality(String),
    state             String CODEC(ZSTD(1)),             -- the core's snapshot format (adtally-core docs)
    taken_at          DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(next_offset)
ORDER BY (topic, source_partition, semantics_version);

-- Where each consumer stands: written only after the rows they cover were
-- acknowledged. With the watermark, readers know which minutes are final:
-- a window before the core's first_open_window(W_p) of every partition
-- never changes again (`adtally serve` caches those).
CREATE TABLE IF NOT EXISTS {db}.consumer_offsets
(
    topic         String,
    partition     UInt32,
    next_offset   Int64,                                 -- the first offset not yet covered
    committed_at  DateTime64(3, 'UTC') DEFAULT now64(3),
    watermark_ms  Nullable(Int64),                       -- W_p there, NULL before the partition has one
    module_sha256 LowCardinality(String)                 -- the module that processed up to there
)
ENGINE = ReplacingMergeTree(next_offset)
ORDER BY (topic, partition);

-- Clicks that arrived after their window was final (kept for reconciliation).
CREATE TABLE IF NOT EXISTS {db}.late_events
(
    topic            LowCardinality(String),
    source_partition UInt32,
    source_offset    Int64,
    event_key        FixedString(32),
    ad_id            String,
    click_ts         DateTime64(3, 'UTC'),
    window_start     DateTime64(3, 'UTC'),
    watermark        DateTime64(3, 'UTC'),               -- W_p when it arrived
    module_sha256    LowCardinality(String),
    written_at       DateTime64(3, 'UTC') DEFAULT now64(3),
    rollup_set       LowCardinality(String)              -- the set whose stream side-lined it
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, source_partition, source_offset, rollup_set);

-- Records that are not valid clicks, with the core's reason code and the payload as received.
CREATE TABLE IF NOT EXISTS {db}.invalid_events
(
    topic            LowCardinality(String),
    source_partition UInt32,
    source_offset    Int64,
    reason           LowCardinality(String),             -- e.g. missing_field:ad_id
    payload          String,
    written_at       DateTime64(3, 'UTC') DEFAULT now64(3),
    rollup_set       LowCardinality(String)              -- the set whose stream side-lined it
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, source_partition, source_offset, rollup_set);

-- The ClickHouse-native path's invalid records (the core's stateless
-- verdict in the views), apart from the stream's side output above: a
-- record the host side-lined for its partition's state, or quarantined,
-- keeps that row whoever else reads the record.
CREATE TABLE IF NOT EXISTS {db}.batch_invalid_events
(
    topic            LowCardinality(String),
    source_partition UInt32,
    source_offset    Int64,
    reason           LowCardinality(String),
    payload          String,
    record_time_ms   Nullable(Int64),                    -- the Kafka record's timestamp, NULL when none
    written_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, source_partition, source_offset);

-- Heartbeat records as received, by source position: with raw_events and
-- batch_invalid_events, every record of a partition, so that a replay sees
-- the watermark move as the stream saw it.
CREATE TABLE IF NOT EXISTS {db}.batch_heartbeats
(
    topic            LowCardinality(String),
    source_partition UInt32,
    source_offset    Int64,
    record_time_ms   Nullable(Int64),
    payload          String,
    written_at       DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, source_partition, source_offset)
TTL toDateTime(written_at) + INTERVAL 400 DAY DELETE;

-- The batch path's per-minute counts: exact distinct event keys per
-- (window, ad, filter), deduplicated across every partition and replay.
CREATE TABLE IF NOT EXISTS {db}.batch_minute_counts
(
    window_start DateTime64(3, 'UTC'),
    ad_id        String,
    filter_id    UInt32,
    event_keys   AggregateFunction(uniqExact, FixedString(32))
)
ENGINE = AggregatingMergeTree
ORDER BY (ad_id, window_start, filter_id);

-- Every reconciliation's result (`adtally reconcile`): the range, the
-- differing cells by verdict (a cell with two kinds of explanation counts
-- under both), the clicks and the modules on each side.
CREATE TABLE IF NOT EXISTS {db}.reconciliations
(
    run_at                   DateTime64(3, 'UTC') DEFAULT now64(3),
    range_from               DateTime64(3, 'UTC'),        -- the first minute compared
    range_to                 DateTime64(3, 'UTC'),        -- the first minute not compared
    filter_ids               Array(UInt32),               -- [] when every filter
    rollup_set               String,                      -- the set compared (--set); '': each window's in force
    scheduled                UInt8,                       -- 1: a run of --every or --daily
    cells                    UInt64,
    equal                    UInt64,
    late                     UInt64,                      -- cells explained by late clicks
    side_lined               UInt64,                      -- ... by clicks side-lined for a partition's state
    cross_partition          UInt64,                      -- ... by clicks counted in several partitions
    unexplained              UInt64,
    stream_clicks            UInt64,
    batch_clicks             UInt64,
    stream_modules           Array(String),               -- SHA-256 of the modules of the rollups compared
    batch_module             String,                      -- SHA-256 of the module the batch path ran then
    batch_semantics_versions Array(UInt32),               -- of the modules that parsed the raw events
    seconds                  Float64
)
ENGINE = MergeTree
ORDER BY (range_from, run_at);

-- Which module was in force when: every row can be traced to a module hash.
CREATE TABLE IF NOT EXISTS {db}.module_history
(
    installed_at DateTime64(3, 'UTC') DEFAULT now64(3),
    module       String,
    sha256       FixedString(64),
    semantics_version UInt32
)
ENGINE = MergeTree
ORDER BY installed_at;
