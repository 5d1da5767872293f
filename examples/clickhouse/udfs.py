"""The core's UDFs called from SQL in the embedded ClickHouse (chDB): the
module installed under its hash, then records parsed, windowed and
filtered in a query, and two rankings merged, all by the core.

    make setup wasm && ~/.cache/adtally/venv/bin/python examples/clickhouse/udfs.py
"""
import os
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "clickhouse"))
import adtally_ch  # noqa: E402

with tempfile.TemporaryDirectory() as data:
    session = adtally_ch.open_session(data)

    def query(sql):
        return session.query(sql, "TSV").bytes().decode()

    module, sha = adtally_ch.install(query, os.path.join(ROOT, "target", "wasm", "adtally_clickhouse.wasm"))
    print(f"module {module} sha256 {sha}")
    rows = query("""
        SELECT p.kind, p.reason, p.ad_id, p.time_ms,
               if(p.kind = 'click', adtally_window_start(p.time_ms, 60000), 0) AS window_start,
               adtally_filter_ids('[{"id": 1, "country": ["USA"]}]', p.country, p.ip, p.user_id) AS filters
        FROM (SELECT adtally_parse(line) AS p
              FROM values('line String', ('ad1, 61000, u1, 1.2.3.4, USA'), ('ad2, 2021-01-01 00:00:05, u2, ::1, DE'),
                                         ('ad3, 5000, u3, 999.1.1.1, USA'), ('{"heartbeat_ms": 120000}')))
        """)
    print("kind\treason\tad_id\ttime_ms\twindow_start\tfilters")
    print(rows, end="")
    assert rows.splitlines()[0] == "click\t\tad1\t61000\t60000\t[0,1]", rows
    assert "bad_ip" in rows.splitlines()[2], rows
    merged = query("SELECT adtally_merge_top_n(CAST([[('ad1', 9), ('ad3', 2)], [('ad2', 5)]] "
                   "AS Array(Array(Tuple(String, UInt64)))), 2::UInt32)")
    print("top 2 of two partitions' rankings:", merged, end="")
    assert merged.strip() == "[('ad1',9),('ad2',5)]", merged
    session.close()
