"""Schema migrations: tables an earlier schema created are brought to the
current keys by install.py, their rows kept."""
import pytest
import install as installer
from conftest import WASM


def test_snapshots_keyed_without_semantics_version_are_migrated(ch):
    ch("CREATE DATABASE IF NOT EXISTS adtally")
    # The table as the previous schema created it.
    ch("CREATE TABLE adtally.snapshots (topic String, source_partition UInt32, next_offset Int64, "
       "semantics_version UInt32, module_sha256 LowCardinality(String), state String CODEC(ZSTD(1)), "
       "taken_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
       "ENGINE = ReplacingMergeTree(next_offset) ORDER BY (topic, source_partition)")
    ch("INSERT INTO adtally.snapshots (topic, source_partition, next_offset, semantics_version, module_sha256, state) "
       "VALUES ('clicks', 0, 100, 2, 'a', 'old'), ('clicks', 1, 50, 2, 'a', 'old1')")
    installer.install(ch, WASM)
    key = ch("SELECT sorting_key FROM system.tables WHERE database = 'adtally' AND name = 'snapshots'")
    assert key.decode().strip() == "topic, source_partition, semantics_version"
    rows = ch("SELECT source_partition, next_offset, semantics_version, state FROM adtally.snapshots "
              "ORDER BY source_partition FORMAT TSV").decode()
    assert rows == "0\t100\t2\told\n1\t50\t2\told1\n"
    # Now a newer version's snapshot at a lower offset survives a merge.
    ch("INSERT INTO adtally.snapshots (topic, source_partition, next_offset, semantics_version, module_sha256, state) "
       "VALUES ('clicks', 0, 10, 3, 'b', 'new')")
    ch("OPTIMIZE TABLE adtally.snapshots FINAL")
    rows = ch("SELECT next_offset, semantics_version FROM adtally.snapshots WHERE source_partition = 0 "
              "ORDER BY semantics_version FORMAT TSV").decode()
    assert rows == "100\t2\n10\t3\n"
    # Installing again changes nothing.
    installer.install(ch, WASM)
    assert ch("SELECT count() FROM adtally.snapshots").decode().strip() == "3"


OLD_ROLLUPS = ("CREATE TABLE adtally.rollups (window_start DateTime64(3, 'UTC'), ad_id String, filter_id UInt32, "
               "source_partition UInt32, clicks UInt64, version UInt32, module_sha256 LowCardinality(String), "
               "written_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree(version) "
               "PARTITION BY toYYYYMM(window_start) ORDER BY (ad_id, window_start, filter_id, source_partition)")
OLD_TOP_N = ("CREATE TABLE adtally.most_clicked_ads (window_minutes UInt32, update_time_minute DateTime64(3, 'UTC'), "
             "filter_id UInt32, source_partition UInt32, version UInt32, most_clicked_ads Array(Tuple(String, UInt64)), "
             "module_sha256 LowCardinality(String), written_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
             "ENGINE = ReplacingMergeTree(version) ORDER BY (window_minutes, update_time_minute, filter_id, source_partition)")


def old_tables_with_rows(ch):
    ch("CREATE DATABASE IF NOT EXISTS adtally")
    ch(OLD_ROLLUPS)
    ch(OLD_TOP_N)
    ch("INSERT INTO adtally.rollups (window_start, ad_id, filter_id, source_partition, clicks, version, module_sha256) "
       "VALUES (60000, 'ad1', 0, 0, 5, 1, 'a'), (60000, 'ad1', 0, 0, 7, 2, 'a'), (60000, 'ad2', 0, 1, 3, 1, 'a')")
    ch("INSERT INTO adtally.most_clicked_ads (window_minutes, update_time_minute, filter_id, source_partition, version, "
       "most_clicked_ads, module_sha256) VALUES (1, 60000, 0, 0, 1, [('ad1', 7)], 'a')")


def test_rollups_without_a_topic_get_the_topic_the_host_read(ch):
    old_tables_with_rows(ch)
    ch("CREATE TABLE adtally.consumer_offsets (topic String, partition UInt32, next_offset Int64, "
       "written_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree(next_offset) ORDER BY (topic, partition)")
    ch("INSERT INTO adtally.consumer_offsets (topic, partition, next_offset) VALUES ('clicks', 0, 10), ('clicks', 1, 4)")
    installer.install(ch, WASM)
    for table, key in (("rollups", "ad_id, window_start, filter_id, topic, source_partition, module_sha256, "
                                   "rollup_set"),
                       ("most_clicked_ads", "window_minutes, update_time_minute, filter_id, topic, source_partition, "
                                            "module_sha256, rollup_set")):
        got = ch(f"SELECT sorting_key FROM system.tables WHERE database = 'adtally' AND name = '{table}'")
        assert got.decode().strip() == key
    # (ad1's version 1 and 2 are one row: the newer replaced the older.)
    assert ch("SELECT topic, count() FROM adtally.rollups FINAL GROUP BY topic FORMAT TSV").decode() == "clicks\t2\n"
    assert ch("SELECT topic, count() FROM adtally.most_clicked_ads GROUP BY topic FORMAT TSV").decode() == "clicks\t1\n"
    counts = ch("SELECT ad_id, clicks FROM adtally.clicks_per_minute ORDER BY ad_id FORMAT TSV").decode()
    assert counts == "ad1\t7\nad2\t3\n"
    # The offsets gained the watermark readers take finality from (NULL
    # for the rows before) and the module.
    assert ch("SELECT partition, next_offset, watermark_ms, module_sha256 FROM adtally.consumer_offsets "
              "ORDER BY partition FORMAT TSV").decode() == "0\t10\t\\N\t\n1\t4\t\\N\t\n"
    # Installing again changes nothing.
    installer.install(ch, WASM)
    assert ch("SELECT count() FROM adtally.rollups FINAL").decode().strip() == "2"


def test_rollups_without_a_topic_and_no_topic_on_record_need_the_operator(ch):
    old_tables_with_rows(ch)
    with pytest.raises(installer.MigrationError, match="--topic-of-existing-rows"):
        installer.install(ch, WASM)
    # Nothing was moved: the rows are where they were.
    assert "topic" not in installer.sorting_key(ch, "adtally", "rollups")
    assert ch("SELECT count() FROM adtally.rollups FINAL").decode().strip() == "2"
    installer.install(ch, WASM, topic_of_existing_rows="clicks_eu")
    assert ch("SELECT DISTINCT topic FROM adtally.rollups FORMAT TSV").decode() == "clicks_eu\n"


def test_a_tie_of_versions_is_settled_by_module_not_by_insertion(ch):
    installer.install(ch, WASM)
    insert = ("INSERT INTO adtally.rollups (window_start, ad_id, filter_id, topic, source_partition, clicks, version, "
              "module_sha256) VALUES ")
    # Two modules wrote version 1 of one cell; inserted in either order, the
    # row of the greater hash counts, before and after merges.
    for order in (("'bbb'", 9), ("'aaa'", 4)), (("'aaa'", 4), ("'bbb'", 9)):
        ch("TRUNCATE TABLE adtally.rollups")
        for sha, clicks in order:
            ch(insert + f"(60000, 'ad1', 0, 'clicks', 0, {clicks}, 1, {sha})")
        # The same partition number in another topic is another cell.
        ch(insert + "(60000, 'ad1', 0, 'clicks_eu', 0, 2, 1, 'aaa')")
        for _ in range(2):
            got = ch("SELECT clicks, arraySort(modules) FROM adtally.clicks_per_minute FORMAT TSV").decode()
            assert got == "11\t['aaa','bbb']\n", order
            ch("OPTIMIZE TABLE adtally.rollups FINAL")


def test_a_migration_cut_short_is_done_again_and_rows_without_a_topic_are_refused(ch):
    old_tables_with_rows(ch)
    # What a crash after filling, before the swap, leaves.
    ch(OLD_ROLLUPS.replace("adtally.rollups", "adtally.rollups_migrating"))
    installer.install(ch, WASM, topic_of_existing_rows="clicks")
    assert ch("SELECT count() FROM system.tables WHERE database = 'adtally' AND name LIKE '%migrat%'"
              ).decode().strip() == "0"
    assert ch("SELECT ad_id, clicks FROM adtally.clicks_per_minute ORDER BY ad_id FORMAT TSV").decode() == "ad1\t7\nad2\t3\n"
    # A host of the earlier schema writes no topic: refused, not counted.
    with pytest.raises(Exception, match="topic_named"):
        ch("INSERT INTO adtally.rollups (window_start, ad_id, filter_id, source_partition, clicks, version, "
           "module_sha256) VALUES (60000, 'ad1', 0, 0, 9, 3, 'a')")


OLD_RAW_EVENTS = ("CREATE TABLE adtally.raw_events (event_key FixedString(32), ad_id String, click_ts DateTime64(3, 'UTC'), "
                  "user_id String, ip String, country LowCardinality(String), event_id String, "
                  "window_start DateTime64(3, 'UTC'), filter_ids Array(UInt32), semantics_version UInt32, "
                  "topic LowCardinality(String), source_partition UInt32, source_offset Int64, "
                  "ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree(ingested_at) "
                  "PARTITION BY toDate(click_ts) ORDER BY (ad_id, window_start, event_key)")
OLD_BATCH_INVALID = ("CREATE TABLE adtally.batch_invalid_events (topic LowCardinality(String), source_partition UInt32, "
                     "source_offset Int64, reason LowCardinality(String), payload String, "
                     "written_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree "
                     "ORDER BY (topic, source_partition, source_offset)")


def test_raw_events_kept_by_key_are_rebuilt_by_position_with_payloads_the_core_reads_back(ch):
    installer.install(ch, WASM)
    payloads = ['{"ad_id":"ad-1","click_timestamp":1700000000123,"user_id":"u\\"1","ip":"10.0.0.1","country":"USA"}',
                '{"ad_id":"ad-2","click_timestamp":1700000060000,"user_id":"u2","ip":"::ffff:10.0.0.2",'
                '"country":"de","event_id":"e-9"}']
    for i, p in enumerate(payloads):
        ch(f"INSERT INTO adtally.ingest (topic, source_partition, source_offset, record_time_ms, payload) "
           f"VALUES ('clicks', 0, {i}, NULL, '{p.replace(chr(92), chr(92) * 2)}')")
    before = ch("SELECT event_key, ad_id, click_ts, user_id, ip, country, event_id FROM adtally.raw_events "
                "ORDER BY source_offset FORMAT TSV")
    # The tables as the previous schema kept them, with these rows.
    columns = installer.RAW_EVENTS_BY_KEY
    ch("RENAME TABLE adtally.raw_events TO adtally.raw_events_new")
    ch(OLD_RAW_EVENTS)
    ch(f"INSERT INTO adtally.raw_events ({columns}) SELECT {columns} FROM adtally.raw_events_new")
    ch("DROP TABLE adtally.raw_events_new")
    ch("DROP TABLE adtally.batch_invalid_events")
    ch(OLD_BATCH_INVALID)
    # The pipeline's per-record table as it was, without the record time.
    ch("DROP TABLE adtally.parsed")
    ch("CREATE TABLE adtally.parsed (topic String, source_partition UInt32, source_offset Int64, payload String, "
       "kind String, reason String, event_key String, ad_id String, time_ms Int64, user_id String, ip String, "
       "country String, event_id String, window_start_ms Int64, filter_ids Array(UInt32), semantics_version UInt32) "
       "ENGINE = Null")
    installer.install(ch, WASM)
    key = ch("SELECT sorting_key FROM system.tables WHERE database = 'adtally' AND name = 'raw_events'")
    assert key.decode().strip() == "ad_id, window_start, event_key, topic, source_partition, source_offset"
    assert ch("SELECT count() FROM system.columns WHERE database = 'adtally' AND table = 'batch_invalid_events' "
              "AND name = 'record_time_ms'") == b"1\n"
    # The rebuilt payloads parse back to the same clicks and keys.
    again = ch("SELECT r.key, r.ad_id, fromUnixTimestamp64Milli(r.time_ms, 'UTC'), r.user_id, r.ip, r.country, r.event_id "
               "FROM (SELECT adtally_classify(payload, 0, 0, '{}') AS r, source_offset FROM adtally.raw_events FINAL) "
               "ORDER BY source_offset FORMAT TSV")
    assert again == before and before.count(b"\n") == 2
    installer.install(ch, WASM)
    assert ch("SELECT count() FROM adtally.raw_events FINAL") == b"2\n"
    # Records keep arriving into the migrated tables, with their payloads.
    p = '{"ad_id":"ad-3","click_timestamp":1700000120000,"user_id":"u3","ip":"10.0.0.3","country":"USA"}'
    ch(f"INSERT INTO adtally.ingest (topic, source_partition, source_offset, record_time_ms, payload) "
       f"VALUES ('clicks', 0, 2, 1700000121000, '{p}')")
    assert ch("SELECT count(), countIf(payload = '" + p + "' AND record_time_ms = 1700000121000) "
              "FROM adtally.raw_events FINAL FORMAT TSV") == b"3\t1\n"


def test_tables_without_rollup_sets_gain_them_in_their_keys_with_their_rows(ch):
    installer.install(ch, WASM)
    # The tables as the schema before rollup sets made them, with rows.
    for table in installer.WITH_SETS:
        key = ch(f"SELECT sorting_key FROM system.tables WHERE database = 'adtally' AND name = '{table}'").decode().strip()
        ch(f"DROP TABLE adtally.{table}")
        ddl = installer.table_ddl("adtally", table, table)
        ddl = ddl.replace(", rollup_set)", ")").replace("ORDER BY (" + key + ")", "ORDER BY (" + key.replace(", rollup_set", "") + ")")
        ddl = "\n".join(line for line in ddl.splitlines() if not line.strip().startswith("rollup_set"))
        ch(ddl)
    ch("INSERT INTO adtally.rollups (window_start, ad_id, filter_id, topic, source_partition, clicks, version, module_sha256) "
       "VALUES (60000, 'ad1', 0, 'clicks', 0, 7, 1, 'a')")
    ch("INSERT INTO adtally.late_events (topic, source_partition, source_offset, event_key, ad_id, click_ts, window_start, "
       "watermark, module_sha256) VALUES ('clicks', 0, 5, '0123456789abcdef0123456789abcdef', 'ad1', 0, 0, 0, 'a')")
    installer.install(ch, WASM)
    for table in installer.WITH_SETS:
        key = ch(f"SELECT sorting_key FROM system.tables WHERE database = 'adtally' AND name = '{table}'").decode()
        assert key.strip().endswith(", rollup_set"), (table, key)
    assert ch("SELECT ad_id, clicks FROM adtally.clicks_per_minute FORMAT TSV") == b"ad1\t7\n"
    assert ch("SELECT rollup_set, source_offset FROM adtally.late_events FORMAT TSV") == b"\t5\n"
    installer.install(ch, WASM)
    assert ch("SELECT count() FROM adtally.rollups") == b"1\n"
