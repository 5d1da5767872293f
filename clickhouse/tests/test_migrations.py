"""Schema migrations: tables an earlier schema created are brought to the
current keys by install.py, their rows kept."""
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
