//! The reconciliation's queries: the comparison of a chunk of minutes, and
//! the explanation of the cells that differ. Both run in ClickHouse over
//! bound parameters (`from`, `to`: ms; `filters`: the filter ids, empty
//! for every filter); the host receives one summary row and one row per
//! differing cell, never the cells that agree.

/// Rows whose `window_start` is in `[from, to)`.
const MINUTES: &str = "window_start >= fromUnixTimestamp64Milli({from:Int64}, 'UTC') \
                       AND window_start < fromUnixTimestamp64Milli({to:Int64}, 'UTC')";
/// The active sets, for [`IN_FORCE`].
const ACTIVE: &str = "(SELECT sets FROM {db}.active_rollup_sets) AS active";
/// The rollup set compared for a row of `topic` and `window_start`: the
/// one named by `{set:String}` for its topic `{set_topic:String}` and range
/// `[{set_from}, {set_to})` when `{named:UInt8}`, else the one in force for the (topic, window) (see
/// `rollup_sets`), given [`ACTIVE`] in a WITH clause.
const IN_FORCE: &str = "if({named:UInt8} AND topic = {set_topic:String} \
                        AND window_start >= fromUnixTimestamp64Milli({set_from:Int64}, 'UTC') \
                        AND window_start < fromUnixTimestamp64Milli({set_to:Int64}, 'UTC'), {set:String}, \
                        arrayFirst(s -> s.2 = topic AND window_start >= s.3 AND window_start < s.4, active).1)";
/// Rows of the filters compared.
const FILTERS: &str = "(empty({filters:Array(UInt32)}) OR has({filters:Array(UInt32)}, filter_id))";

/// The cells of `[from, to)`: the stream's count (each topic's set
/// compared, summed as `clicks_per_minute` sums it) and the batch truth's
/// (`batch_clicks_per_minute`) side by side, 0 where a side has no row
/// (`join_use_nulls = 0`, set on the queries).
fn cells(db: &str) -> String {
    format!(
        "SELECT window_start, ad_id, filter_id, s.clicks AS stream, b.clicks AS batch \
         FROM (SELECT window_start, ad_id, filter_id, sum(clicks) AS clicks FROM {db}.rollup_cells \
               WHERE {MINUTES} AND {FILTERS} AND rollup_set = {IN_FORCE} \
               GROUP BY window_start, ad_id, filter_id) AS s \
         FULL OUTER JOIN (SELECT window_start, ad_id, filter_id, clicks FROM {db}.batch_clicks_per_minute \
                          WHERE {MINUTES} AND {FILTERS}) AS b \
         USING (window_start, ad_id, filter_id)"
    )
}

/// One row: cells, equal cells, clicks on each side, the modules that
/// wrote rollups of the range, and the semantics versions of the modules
/// that parsed its raw events.
pub(super) fn compare(db: &str) -> String {
    format!(
        "WITH {active} \
         SELECT count() AS cells, countIf(stream = batch) AS equal, sum(stream) AS stream_clicks, \
         sum(batch) AS batch_clicks, \
         (SELECT arraySort(groupUniqArray(toString(module_sha256))) FROM {db}.rollups \
          WHERE {MINUTES} AND {FILTERS} AND rollup_set = {IN_FORCE}) AS stream_modules, \
         (SELECT arraySort(groupUniqArray(semantics_version)) FROM {db}.raw_events WHERE {MINUTES}) \
          AS batch_semantics_versions \
         FROM ({}) SETTINGS join_use_nulls = 0",
        cells(db),
        active = ACTIVE.replace("{db}", db),
    )
}

/// One row per cell whose sides differ, with what the raw events say of
/// it. Each of the cell's raw records is looked up by position among the
/// side outputs of the set compared for its window: late (`late_events`) or side-lined for its
/// partition's state (`invalid_events`: ahead of the partition, its
/// bounds, a quarantined record). A (topic, partition) counted a key when
/// the first of the key's records there that it did not side-line was not
/// late (a repeat of a late click is a duplicate of it, never counted; a
/// side-lined click is not remembered, so a resend of it may count):
///
/// - `counted`: the sum over the cell's keys of the partitions that
///   counted each, what the stream's count must be;
/// - `late`, `side_lined`: keys no partition counted, late or side-lined;
/// - `extra`: the counts beyond one of keys several partitions counted.
///
/// (A key with a record in neither side output counts as counted: a lost
/// or doubled write shows as a stream count other than `counted`.)
///
/// The differing cells are computed once (a materialized CTE, which
/// `enable_materialized_cte` makes one: without it the comparison runs
/// twice, and the query takes 2.8 times as long) and read twice: to pick
/// the raw events, and to join their explanation.
pub(super) fn differences(db: &str) -> String {
    format!(
        "WITH {active}, diff AS MATERIALIZED (SELECT * FROM ({cells}) WHERE stream != batch) \
         SELECT toUnixTimestamp64Milli(d.window_start) AS window_start, d.ad_id AS ad_id, d.filter_id AS filter_id, \
                d.stream AS stream, d.batch AS batch, e.counted AS counted, e.late AS late, \
                e.side_lined AS side_lined, e.extra AS extra \
         FROM diff AS d LEFT JOIN ( \
             SELECT window_start, ad_id, filter_id, sum(counted_in) AS counted, \
                    countIf(counted_in = 0 AND was_late) AS late, \
                    countIf(counted_in = 0 AND NOT was_late AND was_side_lined) AS side_lined, \
                    toUInt64(sum(if(counted_in > 1, counted_in - 1, 0))) AS extra \
             FROM ( \
                 SELECT window_start, ad_id, filter_id, event_key, countIf(counted) AS counted_in, \
                        max(late) AS was_late, max(side_lined) AS was_side_lined \
                 FROM ( \
                 SELECT window_start, ad_id, filter_id, event_key, topic, source_partition, \
                        countIf(NOT is_side_lined) > 0 \
                            AND NOT argMinIf(is_late, source_offset, NOT is_side_lined) AS counted, \
                        max(is_late) AS late, max(is_side_lined) AS side_lined \
                 FROM ( \
                     SELECT window_start, ad_id, arrayJoin(filter_ids) AS filter_id, event_key, topic, source_partition, \
                            source_offset, \
                            (topic, source_partition, source_offset, {IN_FORCE}) IN \
                                (SELECT topic, source_partition, source_offset, rollup_set FROM {db}.late_events \
                                 WHERE {MINUTES}) AS is_late, \
                            (topic, source_partition, source_offset, {IN_FORCE}) IN \
                                (SELECT topic, source_partition, source_offset, rollup_set FROM {db}.invalid_events \
                                 WHERE (topic, source_partition, source_offset) IN \
                                     (SELECT topic, source_partition, source_offset FROM {db}.raw_events \
                                      WHERE {MINUTES} AND (ad_id, window_start) IN (SELECT ad_id, window_start FROM diff))) \
                                AS is_side_lined \
                     FROM {db}.raw_events \
                     WHERE {MINUTES} AND (ad_id, window_start) IN (SELECT ad_id, window_start FROM diff) \
                 ) \
                 WHERE (ad_id, window_start, filter_id) IN (SELECT ad_id, window_start, filter_id FROM diff) \
                 GROUP BY window_start, ad_id, filter_id, event_key, topic, source_partition \
                 ) \
                 GROUP BY window_start, ad_id, filter_id, event_key \
             ) \
             GROUP BY window_start, ad_id, filter_id \
         ) AS e USING (window_start, ad_id, filter_id) \
         ORDER BY window_start, ad_id, filter_id \
         SETTINGS enable_materialized_cte = 1, join_use_nulls = 0",
        cells = cells(db),
        active = ACTIVE.replace("{db}", db),
    )
}

/// The module the ClickHouse functions (and so the batch path's views)
/// compute with now: its SHA-256, '' when none is installed.
pub(crate) const BATCH_MODULE: &str = "SELECT extract(create_query, 'SHA256_HASH \\'([0-9a-f]{64})\\'') \
     FROM system.functions WHERE name = 'adtally_classify'";
