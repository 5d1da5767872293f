"""Runs the conformance vectors through the ClickHouse UDF module in chDB.

usage: conformance --normalised | python clickhouse/conformance.py MODULE.wasm

Reads the vectors, normalised by the conformance tool (the only reader of
the vector format), one JSON line each from standard input. Prints one JSON
line per vector: what the SQL functions say of every record, the direct
calls' and the top-N merges' results, in the canonical shape the
conformance tool compares. The configuration is read by the module's own
`adtally_config`, defaults and refusals included.
"""
import json
import sys
import tempfile

import os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adtally_ch  # noqa: E402

# The tuple's fields that a record of each kind has (the others are empty).
FIELDS = {
    "invalid": ["reason"],
    "heartbeat": ["time"],
    "click": ["key", "time", "ad_id", "user_id", "ip", "country", "event_id", "window_start", "filters"],
}


def scalar(s, sql):
    """One value, or "error" when the module refuses the arguments."""
    try:
        return json.loads(s.query(f"SELECT {sql} AS v", "JSONEachRow").bytes().decode())["v"]
    except Exception:
        return "error"


def run(s, vector):
    given = adtally_ch.sql_string(vector["config"])
    try:
        r = s.query(f"SELECT adtally_config({given}) AS c", "JSONEachRow")
        config = json.loads(json.loads(r.bytes().decode())["c"])
    except Exception as e:
        refused = {"config_error": str(e), "merges": merges(s, vector)}
        if vector["calls"]:
            refused["calls"] = [call(s, c, given) for c in vector["calls"]]
        return refused
    filters = adtally_ch.sql_string(json.dumps(config["filters"]))
    s.query("DROP TABLE IF EXISTS conf_records")
    s.query("CREATE TABLE conf_records (i UInt32, p UInt32, o Int64, payload String, rt Nullable(Int64)) ENGINE = Memory")
    rows = [r for step in vector["steps"] for r in step.get("records", [])]
    if rows:
        values = ",".join(
            f"({i},{r['p']},{r['o']},unhex('{r['x']}'),{'NULL' if r['t'] is None else r['t']})"
            for i, r in enumerate(rows)
        )
        s.query(f"INSERT INTO conf_records VALUES {values}")
    # The pipeline's function, adtally_classify, gives each record's row;
    # adtally_parse(_at) must agree with its first nine fields.
    res = s.query(
        f"""
        SELECT p, o, r.kind AS kind, r.reason AS reason, r.key AS key, r.time_ms AS time,
               r.ad_id AS ad_id, r.user_id AS user_id, r.ip AS ip, r.country AS country, r.event_id AS event_id,
               r.window_start_ms AS window_start, r.filter_ids AS filters,
               tuple(r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8, r.9)
                 = if(isNull(rt), adtally_parse(payload),
                      adtally_parse_at(payload, assumeNotNull(rt), {config['max_future_skew_ms']}::Int64)) AS parse_agrees
        FROM (SELECT i, p, o, rt, payload,
                     adtally_classify(payload, ifNull(rt, 0), isNotNull(rt), {given}) AS r
              FROM conf_records)
        ORDER BY i""",
        "JSONEachRow",
    )
    records = []
    for line in res.bytes().decode().splitlines():
        row = json.loads(line)
        if not row["parse_agrees"]:
            raise RuntimeError(f"adtally_parse and adtally_classify disagree at offset {row['o']}")
        rec = {"p": row["p"], "o": int(row["o"]), "kind": row["kind"]}
        for f in FIELDS[row["kind"]]:
            v = row[f]
            if v != "":
                rec[f] = int(v) if f in ("time", "window_start") else v
        records.append(rec)
    out = {"records": records, "merges": merges(s, vector)}
    if vector["calls"]:
        out["calls"] = [call(s, c, filters) for c in vector["calls"]]
    return out


def call(s, c, filters):
    if "window_start" in c:
        t, w = c["window_start"]
        return scalar(s, f"adtally_window_start({t}::Int64, {w}::Int64)")
    country, ip, user = (adtally_ch.sql_string(a) for a in c["filter_ids"])
    return scalar(s, f"adtally_filter_ids({filters}, {country}, {ip}, {user})")


def merges(s, vector):
    out = []
    for m in vector["merges"]:
        lists = "[" + ",".join(
            "[" + ",".join(f"({adtally_ch.sql_string(a)},{c}::UInt64)" for a, c in l) + "]" for l in m["lists"]
        ) + "]"
        r = scalar(s, f"adtally_merge_top_n(CAST({lists} AS Array(Array(Tuple(String, UInt64)))), {m['n']}::UInt32)")
        out.append(r if r == "error" else [[a, int(c)] for a, c in r])
    return out


def main():
    module = sys.argv[1]
    with tempfile.TemporaryDirectory() as d:
        s = adtally_ch.open_session(d)
        adtally_ch.install(s.query, module)
        for line in sys.stdin:
            vector = json.loads(line)
            result = {"name": vector["name"]}
            try:
                result.update(run(s, vector))
            except Exception as e:  # one failing vector does not hide the others
                result["error"] = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
            print(json.dumps(result), flush=True)
        s.close()


if __name__ == "__main__":
    main()
