"""Runs the conformance vectors through the ClickHouse UDF module in chDB.

usage: python clickhouse/conformance.py VECTORS_DIR MODULE.wasm

Prints one JSON line per vector: what the SQL functions say of every record
(kind, reason, key, window, filters) and the top-N merge results, in the
canonical shape the conformance tool compares.
"""
import base64
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adtally_ch  # noqa: E402
from vectors import records  # noqa: E402

DEFAULTS = {"window_ms": 60000, "max_future_skew_ms": 3600000}


def run(s, vector):
    cfg = dict(DEFAULTS, **vector.get("config", {}))
    filters = json.dumps(vector.get("config", {}).get("filters", []))
    s.query("DROP TABLE IF EXISTS conf_records")
    s.query("CREATE TABLE conf_records (i UInt32, p UInt32, o Int64, payload String, rt Nullable(Int64)) ENGINE = Memory")
    rows = [r for r, _ in records(vector)]
    if rows:
        values = ",".join(
            f"({i},{p},{o},base64Decode('{base64.b64encode(pl).decode()}'),{'NULL' if t is None else t})"
            for i, (p, o, pl, t) in enumerate(rows)
        )
        s.query(f"INSERT INTO conf_records VALUES {values}")
    res = s.query(
        f"""
        SELECT p, o, r.kind AS kind, r.reason AS reason, r.key AS key, r.time_ms AS time_ms,
               adtally_window_start(r.time_ms, {cfg['window_ms']}::Int64) AS ws,
               adtally_filter_ids({adtally_ch.sql_string(filters)}, r.country, r.ip, r.user_id) AS f
        FROM (SELECT i, p, o, if(isNull(rt), adtally_parse(payload),
                                 adtally_parse_at(payload, assumeNotNull(rt), {cfg['max_future_skew_ms']}::Int64)) AS r
              FROM conf_records)
        ORDER BY i""",
        "JSONEachRow",
    )
    out = []
    for line in res.bytes().decode().splitlines():
        row = json.loads(line)
        rec = {"p": row["p"], "o": int(row["o"]), "kind": row["kind"]}
        if row["kind"] == "invalid":
            rec["reason"] = row["reason"]
        elif row["kind"] == "heartbeat":
            rec["time"] = int(row["time_ms"])
        else:
            rec.update(key=row["key"], time=int(row["time_ms"]), window_start=int(row["ws"]), filters=row["f"])
        out.append(rec)
    merges = []
    for m in vector.get("merges", []):
        lists = "[" + ",".join(
            "[" + ",".join(f"({adtally_ch.sql_string(a)},{c}::UInt64)" for a, c in l) + "]" for l in m["lists"]
        ) + "]"
        try:
            r = s.query(
                f"SELECT adtally_merge_top_n(CAST({lists} AS Array(Array(Tuple(String, UInt64)))), {m['n']}::UInt32) AS m",
                "JSONEachRow",
            )
            merges.append([[a, int(c)] for a, c in json.loads(r.bytes().decode())["m"]])
        except Exception:
            merges.append("error")
    return {"records": out, "merges": merges}


def main():
    vectors_dir, module = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as d:
        s = adtally_ch.open_session(d)
        adtally_ch.install(s.query, module)
        for name in sorted(os.listdir(vectors_dir)):
            if not name.endswith(".json"):
                continue
            vector = json.load(open(os.path.join(vectors_dir, name)))
            result = {"name": name[:-5]}
            try:
                result.update(run(s, vector))
            except Exception as e:  # one failing vector does not hide the others
                result["error"] = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
            print(json.dumps(result), flush=True)
        s.close()


if __name__ == "__main__":
    main()
