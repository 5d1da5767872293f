"""Installs adtally into ClickHouse, or upgrades its UDF module while views run.

usage:
  python clickhouse/install.py install --wasm MODULE.wasm (--data DIR | --url URL)
         [--db adtally] [--config core.json] [--kafka-brokers H:P --kafka-topic T --kafka-group G]
         [--topic-of-existing-rows TOPIC]
  python clickhouse/install.py upgrade --wasm MODULE.wasm (--data DIR | --url URL) [--db adtally]

install: puts the module into system.webassembly_modules under a name derived
from its SHA-256, declares every adtally function over exactly that hash,
creates the tables (sql/schema.sql), the ClickHouse-native pipeline
(sql/pipeline.sql, configured from the core's config: window, skew, filters),
the filters table's rows and, with --kafka-*, the Kafka source (sql/kafka.sql).
Every step is idempotent. Tables an earlier schema created are migrated with
their rows (see `migrate`).

upgrade: inserts the new module under its own name, re-points every function
at it with CREATE OR REPLACE FUNCTION (views keep running and compute with the
new module from their next block), then deletes the old module and records
the change in module_history.
"""
import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adtally_ch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class HttpClickHouse:
    """Runs statements against a ClickHouse server's HTTP interface."""

    def __init__(self, url):
        self.url = url.rstrip("/") + "/"

    def __call__(self, sql, fmt="TabSeparated"):
        req = urllib.request.Request(self.url + "?default_format=" + fmt, data=sql.encode(), method="POST")
        try:
            with urllib.request.urlopen(req) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(e.read().decode(errors="replace").strip()) from None


def session_query(session):
    def query(sql, fmt="TabSeparated"):
        r = session.query(sql, fmt)
        return r.bytes() if r is not None else b""

    return query


def current_module(query):
    """The module the adtally functions point at, or None."""
    out = query("SELECT create_query FROM system.functions WHERE name = 'adtally_parse'").decode()
    for token in out.replace("\\'", "'").split("'"):
        if token.startswith("adtally_") and len(token) == len("adtally_") + 16:
            return token
    return None


def record_module(query, db, module, sha):
    version = int(query("SELECT adtally_semantics_version(0::UInt32)").decode().strip())
    query(f"INSERT INTO {db}.module_history (module, sha256, semantics_version) VALUES ('{module}', '{sha}', {version})")


def table_exists(query, db, table):
    return query(f"SELECT count() FROM system.tables WHERE database = '{db}' AND name = '{table}'").decode().strip() != "0"


def sorting_key(query, db, table):
    return query(f"SELECT sorting_key FROM system.tables WHERE database = '{db}' AND name = '{table}'").decode().strip()


# Tables whose rows an earlier schema wrote without a topic, and their
# columns then (the new tables add `topic` and are keyed by it and by the
# module that wrote the row).
WITHOUT_TOPIC = {
    "rollups": "window_start, ad_id, filter_id, source_partition, clicks, version, module_sha256, written_at",
    "most_clicked_ads": "window_minutes, update_time_minute, filter_id, source_partition, version, "
                        "most_clicked_ads, module_sha256, written_at",
}
SCHEMA = os.path.join(HERE, "sql", "schema.sql")


class MigrationError(Exception):
    """A migration that needs the operator: it says what to pass."""


def table_ddl(db, table, name):
    """sql/schema.sql's CREATE statement of `table`, creating `name`."""
    head = f"CREATE TABLE IF NOT EXISTS {db}.{table}"
    for stmt in adtally_ch.statements(SCHEMA, db=db):
        if stmt.startswith(head) and stmt[len(head)] in " \n(":
            return f"CREATE TABLE {db}.{name}" + stmt[len(head):]
    raise KeyError(table)


def topic_of_old_rows(query, db, topic):
    """The topic rows written without one came from: `topic` if given, else
    the only topic the host has stored offsets or snapshots for. Rows of a
    wrong topic would count twice beside the new rows, so with no topic
    known, or several, the migration stops and asks."""
    if topic is not None:
        return topic
    seen = set()
    for table in ("consumer_offsets", "snapshots"):
        if sorting_key(query, db, table):
            seen |= set(query(f"SELECT DISTINCT topic FROM {db}.{table}").decode().split())
    if len(seen) == 1:
        return seen.pop()
    raise MigrationError(
        "rollups and most_clicked_ads now carry the topic, and their existing rows have none: "
        + (f"the host has read several topics ({', '.join(sorted(seen))})" if seen else "no topic is on record")
        + "; run install again with --topic-of-existing-rows TOPIC (the topic those rows were counted from)")


def migrate_topic(query, db, topic=None):
    """Rebuilds `rollups` and `most_clicked_ads` of an earlier schema, which
    had no topic, with the current definition and their rows, before
    sql/schema.sql runs (its views read the topic). Every table's topic is
    found before any is touched; each table is filled as `*_migrating` and
    swapped in with one RENAME, so a crash at any point leaves the old
    table or the new one whole (a leftover of either name is dropped)."""
    for table in WITHOUT_TOPIC:
        query(f"DROP TABLE IF EXISTS {db}.{table}_migrating")
        query(f"DROP TABLE IF EXISTS {db}.{table}_before_migration")
    old = [t for t in WITHOUT_TOPIC
           if sorting_key(query, db, t) and "topic" not in sorting_key(query, db, t).split(", ")]
    topics = {}
    for table in old:
        rows = int(query(f"SELECT count() FROM {db}.{table}").decode().strip())
        topics[table] = topic_of_old_rows(query, db, topic) if rows else ""
    for table in old:
        columns = WITHOUT_TOPIC[table]
        rebuild(query, db, table,
                f"({columns}, topic) SELECT {columns}, {adtally_ch.sql_string(topics[table])} FROM {{old}}")


# raw_events' columns before it kept one row per source position, with the
# record's payload and timestamp.
RAW_EVENTS_BY_KEY = ("event_key, ad_id, click_ts, user_id, ip, country, event_id, window_start, filter_ids, "
                     "semantics_version, topic, source_partition, source_offset, ingested_at")
# The payload of a row stored before payloads were: the record rebuilt from
# its parsed fields, in the core's JSON form (what replay reads).
REBUILT_PAYLOAD = ("concat('{\"ad_id\":', toJSONString(ad_id), ',\"click_timestamp\":', "
                   "toString(toUnixTimestamp64Milli(click_ts)), ',\"user_id\":', toJSONString(user_id), "
                   "',\"ip\":', toJSONString(ip), ',\"country\":', toJSONString(country), "
                   "if(event_id = '', '', concat(',\"event_id\":', toJSONString(event_id))), '}')")


def rebuild(query, db, table, fill, since=None):
    """Replaces `table` by its sql/schema.sql definition, filled by `fill`
    (an INSERT's column list and SELECT over the old table): built as
    `*_migrating` and swapped in with one RENAME. With `since` (a column of
    the time a row was written), rows written to the old table while the
    copy ran are copied too, after the RENAME and before the old table is
    dropped (the new table's key replaces a row copied twice)."""
    query(f"DROP TABLE IF EXISTS {db}.{table}_migrating")
    query(f"DROP TABLE IF EXISTS {db}.{table}_before_migration")
    query(table_ddl(db, table, f"{table}_migrating"))
    # A minute early: a row stamped just before the copy but committed after
    # its snapshot is copied again after the RENAME (the key replaces it).
    started = query("SELECT toString(now64(3, 'UTC') - INTERVAL 1 MINUTE)").decode().strip()
    query(f"INSERT INTO {db}.{table}_migrating {fill.replace('{old}', f'{db}.{table}')}")
    query(f"RENAME TABLE {db}.{table} TO {db}.{table}_before_migration, "
          f"{db}.{table}_migrating TO {db}.{table}")
    if since:
        late = f"(SELECT * FROM {db}.{table}_before_migration WHERE {since} >= toDateTime64('{started}', 3, 'UTC'))"
        query(f"INSERT INTO {db}.{table} {fill.replace('{old}', late)}")
    query(f"DROP TABLE {db}.{table}_before_migration")


# Tables whose rows carry the rollup set they belong to (a replay's, or the
# live stream's ''), added to their keys.
WITH_SETS = ("rollups", "most_clicked_ads", "late_events", "invalid_events")


def migrate_sets(query, db):
    """Gives tables of an earlier schema the `rollup_set` column, appended
    to their sorting key, before sql/schema.sql's views read it: a column
    added in the same ALTER (with no default expression: its type's, '',
    is the one wanted) may extend the key, so no row is rewritten (every
    existing row is the live stream's, '')."""
    for table in WITH_SETS:
        key = sorting_key(query, db, table)
        if key and "rollup_set" not in key.split(", "):
            query(f"ALTER TABLE {db}.{table} ADD COLUMN IF NOT EXISTS rollup_set LowCardinality(String), "
                  f"MODIFY ORDER BY ({key}, rollup_set)")


def migrate(query, db):
    """Brings tables an earlier schema created to the current keys, keeping
    their rows. `snapshots` was keyed by (topic, source_partition) alone, so
    a module of one semantics version merged away another's state; it is
    rebuilt keyed by semantics version too (rows already merged away before
    the migration are gone, the rest are kept). `raw_events` kept one row
    per event key and no payload: it is rebuilt keyed by source position,
    its rows' payloads rebuilt from their fields. `batch_invalid_events`
    gains the record's timestamp (NULL for rows before), `consumer_offsets`
    the watermark and module (NULL and '' before)."""
    # A rebuild that stopped after its RENAME left the old table: its rows
    # (those written during the copy among them) are copied over first.
    if table_exists(query, db, "raw_events_before_migration") and \
            sorting_key(query, db, "raw_events") != "ad_id, window_start, event_key":
        query(f"INSERT INTO {db}.raw_events ({RAW_EVENTS_BY_KEY}, payload) "
              f"SELECT {RAW_EVENTS_BY_KEY}, {REBUILT_PAYLOAD} FROM {db}.raw_events_before_migration")
        query(f"DROP TABLE {db}.raw_events_before_migration")
        query(f"DROP VIEW IF EXISTS {db}.raw_mv")
    if sorting_key(query, db, "raw_events") == "ad_id, window_start, event_key":
        rebuild(query, db, "raw_events",
                f"({RAW_EVENTS_BY_KEY}, payload) SELECT {RAW_EVENTS_BY_KEY}, {REBUILT_PAYLOAD} FROM {{old}}",
                since="ingested_at")
        # The view that fills raw_events may write to the table it had
        # (renamed away): sql/pipeline.sql creates it again over the new one.
        query(f"DROP VIEW IF EXISTS {db}.raw_mv")
    # The pipeline's per-record table gained the record time (sql/pipeline.sql).
    if table_exists(query, db, "parsed"):
        query(f"ALTER TABLE {db}.parsed ADD COLUMN IF NOT EXISTS record_time_ms Nullable(Int64) AFTER source_offset")
    query(f"ALTER TABLE {db}.batch_invalid_events ADD COLUMN IF NOT EXISTS record_time_ms Nullable(Int64) AFTER payload")
    query(f"ALTER TABLE {db}.reconciliations ADD COLUMN IF NOT EXISTS rollup_set String AFTER filter_ids")
    query(f"ALTER TABLE {db}.consumer_offsets ADD COLUMN IF NOT EXISTS watermark_ms Nullable(Int64)")
    query(f"ALTER TABLE {db}.consumer_offsets ADD COLUMN IF NOT EXISTS module_sha256 LowCardinality(String)")
    if sorting_key(query, db, "snapshots") == "topic, source_partition":
        rebuild(query, db, "snapshots", "SELECT * FROM {old}")


def refresh_view(query, stmt):
    """A materialized view an earlier install created keeps its query (its
    statement says IF NOT EXISTS): it is given this install's, in place, so
    that no block inserted meanwhile goes unseen (a dropped and recreated
    view would miss the blocks in between)."""
    m = re.match(r"CREATE MATERIALIZED VIEW IF NOT EXISTS (\S+) TO \S+ AS\s+(.*)", stmt, re.S)
    if m:
        query(f"ALTER TABLE {m.group(1)} MODIFY QUERY {m.group(2)}")


def core_config(query, module, sha, config):
    """`config` (a dict that may omit fields) as `module` reads it: every
    default filled in, or a ValueError with the core's message naming the
    field. Asked through a function of its own over `module`, so that a
    module the adtally functions do not point at yet can be asked first."""
    probe = f"{module}_config"
    query(adtally_ch.function_statement("adtally_config", module, sha, name=probe))
    arg = adtally_ch.sql_string(json.dumps(config or {}))
    try:
        text = query(f"SELECT {probe}({arg})", "TabSeparatedRaw")
    except Exception as e:  # chDB's and the HTTP client's errors alike
        raise ValueError(f"the core refuses the configuration: {e}") from None
    finally:
        query(f"DROP FUNCTION IF EXISTS {probe}")
    return json.loads(text.decode())


def install(query, wasm, db="adtally", config=None, kafka=None, topic_of_existing_rows=None):
    """Installs the module, its functions, the schema and the pipeline. A
    configuration the module refuses stops it before any function points at
    the module (ValueError)."""
    old = current_module(query)
    with open(wasm, "rb") as f:
        module, sha = adtally_ch.install_module(query, f.read())
    try:
        full = core_config(query, module, sha, config)
    except ValueError:
        if module != old:
            query(f"DELETE FROM system.webassembly_modules WHERE name = '{module}'")
        raise
    adtally_ch.create_functions(query, module, sha)
    query(f"CREATE DATABASE IF NOT EXISTS {db}")
    migrate_topic(query, db, topic_of_existing_rows)
    migrate_sets(query, db)
    for stmt in adtally_ch.statements(SCHEMA, db=db):
        query(stmt)
    migrate(query, db)
    has_tiered = query("SELECT count() FROM system.storage_policies WHERE policy_name = 'adtally_tiered' AND volume_name = 'cold'")
    if has_tiered.decode().strip() not in ("", "0"):
        query(f"ALTER TABLE {db}.raw_events MODIFY SETTING storage_policy = 'adtally_tiered'")
        query(f"ALTER TABLE {db}.raw_events MODIFY TTL toDateTime(ingested_at) + INTERVAL 30 DAY TO VOLUME 'cold', "
              f"toDateTime(ingested_at) + INTERVAL 400 DAY DELETE")
    # The views pass the configuration as given (the module fills in the
    # defaults, as it just did): it goes with every row into the UDF, and
    # the whole configuration is six times the bytes of a typical one.
    given_json = json.dumps(config or {}, separators=(",", ":"))
    for stmt in adtally_ch.statements(os.path.join(HERE, "sql", "pipeline.sql"), db=db,
                                      top_n=int(full["top_n"]),
                                      config_json=adtally_ch.sql_string(given_json)):
        query(stmt)
        refresh_view(query, stmt)
    # An earlier pipeline's view wrote the batch path's invalid records into
    # the stream's `invalid_events`; its successor above writes them apart.
    query(f"DROP VIEW IF EXISTS {db}.invalid_mv")
    for f in full["filters"]:
        query(f"INSERT INTO {db}.filters (filter_id, name, spec) VALUES ({int(f['id'])}, "
              f"{adtally_ch.sql_string(f.get('name', ''))}, {adtally_ch.sql_string(json.dumps(f))})")
    if kafka:
        for stmt in adtally_ch.statements(os.path.join(HERE, "sql", "kafka.sql"), db=db, **kafka):
            query(stmt)
    if query(f"SELECT count() FROM {db}.module_history WHERE sha256 = '{sha}'").decode().strip() == "0":
        record_module(query, db, module, sha)
    return module, sha


def upgrade(query, wasm, db="adtally"):
    old = current_module(query)
    with open(wasm, "rb") as f:
        module, sha = adtally_ch.install_module(query, f.read())
    if module == old:
        return module, sha
    adtally_ch.create_functions(query, module, sha)
    if old:
        query(f"DELETE FROM system.webassembly_modules WHERE name = '{old}'")
    record_module(query, db, module, sha)
    return module, sha


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["install", "upgrade"])
    ap.add_argument("--wasm", required=True, help="the adtally ClickHouse UDF module")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", help="an embedded ClickHouse data directory")
    where.add_argument("--url", help="a ClickHouse server's HTTP URL")
    ap.add_argument("--db", default="adtally")
    ap.add_argument("--config", help="the core's config as a JSON file (window, skew, filters)")
    ap.add_argument("--kafka-brokers")
    ap.add_argument("--kafka-topic")
    ap.add_argument("--kafka-group", default="adtally-clickhouse")
    ap.add_argument("--topic-of-existing-rows",
                    help="when migrating rollups written before they carried a topic: the topic they came from "
                         "(needed only when the host's offsets name no topic or several)")
    args = ap.parse_args()
    if args.data:
        session = adtally_ch.open_session(args.data)
        query = session_query(session)
    else:
        query = HttpClickHouse(args.url)
    if args.command == "install":
        config = json.load(open(args.config)) if args.config else None
        kafka = None
        if args.kafka_brokers:
            if not args.kafka_topic:
                ap.error("--kafka-brokers needs --kafka-topic")
            kafka = {"brokers": args.kafka_brokers, "topic": args.kafka_topic, "group": args.kafka_group}
        try:
            module, sha = install(query, args.wasm, args.db, config, kafka, args.topic_of_existing_rows)
        except (MigrationError, ValueError) as e:
            sys.exit(f"install: {e}")
    else:
        module, sha = upgrade(query, args.wasm, args.db)
    print(f"{args.command}: module {module} sha256 {sha}")


if __name__ == "__main__":
    main()
