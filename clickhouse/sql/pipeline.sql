-- The ClickHouse-native path, on the same WASM core: records -> parse (once)
-- -> raw, invalid (batch_invalid_events), heartbeat and per-minute tables. It has no watermark: it is the
-- batch truth the host's rollups reconcile against.
-- {db}, {config_json} (the whole configuration, as the module reads it) and {top_n} come from the core's config.

-- Records from any source land here (the Kafka table's view, or plain INSERTs).
CREATE TABLE IF NOT EXISTS {db}.ingest
(
    topic            String,
    source_partition UInt32,
    source_offset    Int64,
    record_time_ms   Nullable(Int64),
    payload          String
)
ENGINE = Null;

CREATE TABLE IF NOT EXISTS {db}.parsed
(
    topic String, source_partition UInt32, source_offset Int64, record_time_ms Nullable(Int64), payload String,
    kind String, reason String, event_key String, ad_id String, time_ms Int64,
    user_id String, ip String, country String, event_id String,
    window_start_ms Int64, filter_ids Array(UInt32), semantics_version UInt32
)
ENGINE = Null;

-- One UDF call per row: the core's whole verdict (parse, validation, key,
-- window, filters) under the configuration {config_json}.
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.parse_mv TO {db}.parsed AS
SELECT topic, source_partition, source_offset, record_time_ms, payload,
       r.kind AS kind, r.reason AS reason, r.key AS event_key, r.ad_id AS ad_id, r.time_ms AS time_ms,
       r.user_id AS user_id, r.ip AS ip, r.country AS country, r.event_id AS event_id,
       r.window_start_ms AS window_start_ms, r.filter_ids AS filter_ids, r.semantics_version AS semantics_version
FROM
(
    SELECT *, adtally_classify(payload, ifNull(record_time_ms, 0), isNotNull(record_time_ms), {config_json}) AS r
    FROM {db}.ingest
);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.raw_mv TO {db}.raw_events AS
SELECT toFixedString(event_key, 32) AS event_key, ad_id, fromUnixTimestamp64Milli(time_ms, 'UTC') AS click_ts,
       user_id, ip, country, event_id, fromUnixTimestamp64Milli(window_start_ms, 'UTC') AS window_start,
       filter_ids, semantics_version, topic, source_partition, source_offset, record_time_ms, payload
FROM {db}.parsed WHERE kind = 'click';

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.batch_invalid_mv TO {db}.batch_invalid_events AS
SELECT topic, source_partition, source_offset, reason, payload, record_time_ms
FROM {db}.parsed WHERE kind = 'invalid';

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.batch_heartbeats_mv TO {db}.batch_heartbeats AS
SELECT topic, source_partition, source_offset, record_time_ms, payload
FROM {db}.parsed WHERE kind = 'heartbeat';

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.batch_counts_mv TO {db}.batch_minute_counts AS
SELECT fromUnixTimestamp64Milli(window_start_ms, 'UTC') AS window_start, ad_id, arrayJoin(filter_ids) AS filter_id,
       uniqExactState(toFixedString(event_key, 32)) AS event_keys
FROM {db}.parsed WHERE kind = 'click'
GROUP BY window_start, ad_id, filter_id;

CREATE VIEW IF NOT EXISTS {db}.batch_clicks_per_minute AS
SELECT window_start, ad_id, filter_id, uniqExactMerge(event_keys) AS clicks
FROM {db}.batch_minute_counts
GROUP BY window_start, ad_id, filter_id;

-- Each source partition's latest ranking (highest version) per (M,
-- minute, filter, topic), of the set in force for the minute, and the
-- module that ranked it (what `adtally serve`'s /v1/rankings returns).
CREATE OR REPLACE VIEW {db}.top_ads_by_partition AS
WITH (SELECT sets FROM {db}.active_rollup_sets) AS active
SELECT window_minutes, update_time_minute, filter_id, topic, source_partition,
       argMax(most_clicked_ads, (version, module_sha256)) AS ads,
       max((version, module_sha256)).2 AS module
FROM {db}.most_clicked_ads
-- The rankings of the set in force for the minute (see rollup_sets).
WHERE rollup_set = arrayFirst(s -> s.2 = topic AND update_time_minute >= s.3 AND update_time_minute < s.4, active).1
GROUP BY window_minutes, update_time_minute, filter_id, topic, source_partition;

-- The exact top-N of each topic, per (M, minute, filter, topic): the
-- partitions' rankings merged by the core's own merge. Exact because a
-- topic keyed by ad_id gives each ad one partition, whichever host ranked
-- it; the merge refuses overlapping lists.
CREATE OR REPLACE VIEW {db}.top_ads AS
SELECT
    window_minutes,
    update_time_minute,
    filter_id,
    topic,
    adtally_merge_top_n(groupArray(ads), {top_n}) AS most_clicked_ads,
    count() AS partitions,
    groupUniqArray(module) AS modules
FROM {db}.top_ads_by_partition
GROUP BY window_minutes, update_time_minute, filter_id, topic
-- Small blocks keep each merge call inside the UDF fuel limit: a block of
-- 64 groups of 32 partitions' rankings (100 ads each) ran out of fuel.
SETTINGS webassembly_udf_max_input_block_size = 8;
