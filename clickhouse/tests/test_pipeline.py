"""The ClickHouse-native path on the same WASM core.

- every record gets the same validation result, event key, window and filter
  ids in ClickHouse as in the native core (the vectors' annotations);
- per-minute counts of the batch path equal the core's final counts plus the
  late clicks the core side-lined (those it had not counted already);
- the module can be upgraded while the views run, and they then compute
  with the new module.
"""
import json
import subprocess
from collections import defaultdict

import adtally_ch
import pytest
import install as installer
from conftest import ROOT, WASM, WASM_MARKER


def ingest(ch, rows, db="adtally"):
    """rows: (partition, offset, payload bytes, record time or None)."""
    if not rows:
        return
    values = ",".join(
        f"('clicks', {p}, {o}, {'NULL' if t is None else t}, unhex('{payload.hex()}'))" for p, o, payload, t in rows
    )
    ch(f"INSERT INTO {db}.ingest VALUES {values}")


def vector_records(vector):
    """((partition, offset, payload, record time), replayed) in order;
    replayed offsets (below one already delivered) are not sent to the
    ClickHouse path, as Kafka never delivers an offset twice."""
    out, delivered = [], {}
    for step in vector["steps"]:
        for r in step.get("records", []):
            p, o = r["p"], r["o"]
            replayed = o < delivered.get(p, 0)
            delivered[p] = max(delivered.get(p, 0), o + 1)
            out.append(((p, o, bytes.fromhex(r["x"]), r["t"]), replayed))
    return out


def load_vectors():
    """Every vector the core accepts the config of, as the conformance tool
    (the one reader of the format) normalises it, with its expected results."""
    lines = subprocess.run(
        ["cargo", "run", "--release", "-q", "-p", "adtally-conformance", "--", "--normalised"],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=1800,
    ).stdout.splitlines()
    for line in lines:
        vector = json.loads(line)
        if "config_error" not in vector["expected"]:
            yield vector["name"], vector


def test_every_record_matches_the_native_core_and_counts_reconcile(ch):
    checked_windows = 0
    for i, (name, vector) in enumerate(load_vectors()):
        db = f"v{i}"
        installer.install(ch, WASM, db=db, config=json.loads(vector["config"]))
        recs = vector_records(vector)
        ingest(ch, [r for r, replay in recs if not replay], db)
        annotations = vector["expected"]["records"]
        by_pos = {}
        for a, (r, replay) in zip(annotations, recs):
            if not replay:
                by_pos[(r[0], r[1])] = a

        # 1. Per record: the same verdict, key, window and filters as the core.
        raw = ch(f"SELECT source_partition, source_offset, event_key, toUnixTimestamp64Milli(click_ts), "
                 f"toUnixTimestamp64Milli(window_start), filter_ids FROM {db}.raw_events FINAL FORMAT JSONCompactEachRow")
        seen = set()
        for line in raw.decode().splitlines():
            p, o, key, t, w, filters = json.loads(line)
            a = by_pos[(p, int(o))]
            assert a["kind"] == "click", (name, p, o, a)
            assert (key, int(t), int(w), filters) == (a["key"], a["time"], a["window_start"], a["filters"]), (name, p, o)
            seen.add((p, int(o)))
        invalid = ch(f"SELECT source_partition, source_offset, reason FROM {db}.batch_invalid_events FORMAT JSONCompactEachRow")
        for line in invalid.decode().splitlines():
            p, o, reason = json.loads(line)
            a = by_pos[(p, int(o))]
            assert (a["kind"], a["reason"]) == ("invalid", reason), (name, p, o)
            seen.add((p, int(o)))
        # Raw events are deduplicated by key: every click position is either
        # stored or a duplicate of a stored key.
        stored_keys = {by_pos[pos]["key"] for pos in seen if by_pos[pos]["kind"] == "click"}
        for pos, a in by_pos.items():
            if a["kind"] == "invalid":
                assert pos in seen, (name, pos)
            elif a["kind"] == "click":
                assert a["key"] in stored_keys, (name, pos)

        # 2. Batch counts vs the core's final rollups plus its late side output.
        batch = {}
        for line in ch(f"SELECT toUnixTimestamp64Milli(window_start), ad_id, filter_id, clicks "
                       f"FROM {db}.batch_clicks_per_minute FORMAT JSONCompactEachRow").decode().splitlines():
            w, ad, f, c = json.loads(line)
            batch[(int(w), ad, f)] = int(c)
        outputs = vector["expected"]["outputs"]
        final = {}
        for r in outputs["rollups"]:
            k = (r["window_start"], r["ad_id"], r["filter_id"], r["partition"])
            if k not in final or r["version"] > final[k][0]:
                final[k] = (r["version"], r["clicks"])
        core = defaultdict(int)
        for (w, ad, f, _), (_, c) in final.items():
            core[(w, ad, f)] += c
        # The stream side-lines late clicks, and clicks for its partition's
        # state (too far past its frontier, beyond its bounds): the
        # stateless batch path has no such state and counts them all.
        for_state = {"ahead_of_partition", "too_many_keys", "too_many_cells"}
        late_pos = {(l["partition"], l["offset"]) for l in outputs["late"]}
        late_pos |= {(i["partition"], i["offset"]) for i in outputs["invalid"] if i["reason"] in for_state}
        # A key's first arrival in its partition cannot be a duplicate: it was
        # counted unless it was late.
        counted, late = defaultdict(set), defaultdict(set)
        first_seen = set()
        for (r, replay) in recs:
            p, o = r[0], r[1]
            a = by_pos.get((p, o))
            if replay or a is None or a["kind"] != "click" or (p, a["key"]) in first_seen:
                continue
            first_seen.add((p, a["key"]))
            for f in a["filters"]:
                target = late if (p, o) in late_pos else counted
                target[(a["window_start"], a["ad_id"], f)].add(a["key"])
        for k, c in batch.items():
            if k in counted and k not in core:
                continue  # the core has not closed this window yet
            expected = core.get(k, 0) + len(late[k] - counted[k])
            assert c == expected, (name, k, c, core.get(k, 0), late[k], counted[k])
            checked_windows += 1
    assert checked_windows > 30


def test_upgrade_while_views_are_live(ch):
    old, _ = installer.install(ch, WASM)
    ingest(ch, [(0, 0, b"ad1, 1000, u1, 1.1.1.1, USA", None), (0, 1, b"not a click", None)])
    assert installer.current_module(ch) == old

    new, sha = installer.upgrade(ch, WASM_MARKER)
    assert new != old and installer.current_module(ch) == new
    ingest(ch, [(0, 2, b"ad1, 2000, u2, 1.1.1.1, USA", None), (0, 3, b"ad2, 2000, u2, 1.1.1.1, XXX", None)])

    # The marker build reports the semantics version plus 1000.
    v = int(ch("SELECT adtally_semantics_version(0::UInt32) FORMAT TSV").decode().strip()) - 1000
    rows = ch("SELECT source_offset, semantics_version FROM adtally.raw_events ORDER BY source_offset FORMAT CSV")
    assert rows == f"0,{v}\n2,{v + 1000}\n".encode(), "the views compute with the new module after the upgrade"
    assert ch("SELECT source_offset, reason FROM adtally.batch_invalid_events ORDER BY source_offset FORMAT CSV") == \
        b'1,"malformed"\n3,"unknown_country"\n'
    modules = ch("SELECT name FROM system.webassembly_modules FORMAT CSV").decode()
    assert new in modules and old not in modules, modules
    history = ch("SELECT module, sha256, semantics_version FROM adtally.module_history ORDER BY installed_at FORMAT CSV")
    assert history.decode().splitlines()[-1] == f'"{new}","{sha}",{v + 1000}'
    # Upgrading to the module in force is a no-op.
    assert installer.upgrade(ch, WASM_MARKER)[0] == new


def test_a_module_that_does_not_match_its_hash_is_refused(ch):
    installer.install(ch, WASM)
    code = open(WASM, "rb").read()
    audited = __import__("hashlib").sha256(code).hexdigest()
    tampered = code[:-1] + bytes([code[-1] ^ 1])
    try:
        ch(f"INSERT INTO system.webassembly_modules (name, code, hash) SELECT 'tampered', "
           f"base64Decode('{__import__('base64').b64encode(tampered).decode()}'), "
           f"reinterpretAsUInt256(unhex('{audited}'))")
    except Exception as e:
        assert "Hash mismatch" in str(e) or "INCORRECT_DATA" in str(e)
    else:
        raise AssertionError("a module with a wrong hash was accepted")
    # The running module keeps going.
    ingest(ch, [(0, 0, b"ad1, 1000, u1, 1.1.1.1, USA", None)])
    assert ch("SELECT count() FROM adtally.raw_events") == b"1\n"


def test_install_reads_the_config_through_the_module_and_refuses_what_the_core_refuses(ch):
    with pytest.raises(ValueError, match=r"window_ms` = 0: must be between 1 and 86400000"):
        installer.install(ch, WASM, db="refused", config={"window_ms": 0})
    # Refused before any function pointed at the module: none was declared.
    assert installer.current_module(ch) is None
    module, sha = installer.install(ch, WASM, db="defaults", config={"filters": [{"id": 1, "country": ["USA"]}]})
    full = installer.core_config(ch, module, sha, {})
    assert full["window_ms"] == 60000 and full["top_n"] == 100
    ingest(ch, [(0, 0, b"ad1, 61000, u1, 1.1.1.1, USA", None)], db="defaults")
    row = ch("SELECT toUnixTimestamp64Milli(window_start), filter_ids FROM defaults.raw_events "
             "FORMAT JSONCompactEachRow").decode()
    assert json.loads(row) == [60000, [0, 1]]


def native_summaries(config, rows):
    """What the native core says of each (partition, offset, payload, record
    time) under `config`: the conformance tool's `--summarize`."""
    lines = "".join(json.dumps({"p": p, "o": o, "x": payload.hex(), "t": t}) + "\n" for p, o, payload, t in rows)
    out = subprocess.run(
        ["cargo", "run", "--release", "-q", "-p", "adtally-conformance", "--", "--summarize", json.dumps(config)],
        cwd=ROOT, input=lines, check=True, capture_output=True, text=True, timeout=1800,
    ).stdout
    return [json.loads(l) for l in out.splitlines()]


def kafka_block(n=65_536):
    """A block the size a Kafka engine hands over: log lines and JSON with
    event ids, exact repeats, invalid records, clocks far ahead, heartbeats."""
    base = 1_767_225_600_000
    rows = []
    for i in range(n):
        t = base + i * 13
        kind = i % 16
        if kind == 0:
            payload = f"ad{i % 977}, {t}, u{i % 31}, 10.0.{i % 250}.1, XX"  # unknown country
        elif kind == 1:
            payload = json.dumps({"ad_id": f"ad{i % 977}", "click_timestamp": t, "user_id": f"u{i % 31}",
                                  "ip": f"2001:db8::{i % 9999:x}", "country": "USA", "event_id": f"e{i // 3}"})
        elif kind == 2:
            payload = f"ad{(i - 2) % 977}, {t - 2 * 13}, u{(i - 2) % 31}, 10.0.{(i - 2) % 250}.1, USA"  # a repeat
        elif kind == 3:
            payload = f"[Heartbeat] {t}"
        elif kind == 4:
            payload = f"ad{i % 977}, {t + 3 * 3_600_000}, u1, 10.0.0.1, USA"  # 3 h ahead of its record time
        else:
            payload = f"ad{i % 977}, {t}, u{i % 31}, 10.0.{i % 250}.1, {'USA' if i % 3 else 'FRA'}"
        rows.append((i % 32, i // 32, payload.encode(), t))
    return rows


def test_a_kafka_sized_block_goes_through_the_views_with_default_settings(ch):
    config = {"filters": [{"id": 1, "country": ["USA"]}, {"id": 2, "ip": ["10.0.0.0/16"]}]}
    installer.install(ch, WASM, config=config)
    rows = kafka_block()
    # One INSERT, one block of 65,536 rows, no setting in the request.
    ingest(ch, rows)
    native = {(a["p"], a["o"]): a for a in native_summaries(config, rows)}
    assert len(native) == len(rows)

    raw = {}
    for line in ch("SELECT source_partition, source_offset, event_key, toUnixTimestamp64Milli(click_ts), "
                   "toUnixTimestamp64Milli(window_start), filter_ids, ad_id, user_id, ip, country, event_id "
                   "FROM adtally.raw_events FINAL FORMAT JSONCompactEachRow").decode().splitlines():
        p, o, key, t, w, f, ad, user, ip, country, event_id = json.loads(line)
        raw[key] = (int(p), int(o), int(t), int(w), f, ad, user, ip, country, event_id)
    invalid = {(int(p), int(o)): reason for p, o, reason in (
        json.loads(l) for l in ch("SELECT source_partition, source_offset, reason FROM adtally.batch_invalid_events "
                                  "FORMAT JSONCompactEachRow").decode().splitlines())}
    # Every click's key is stored once, with the core's fields; every
    # invalid record with the core's reason; nothing else.
    clicks = [a for a in native.values() if a["kind"] == "click"]
    assert {a["key"] for a in clicks} == set(raw)
    for a in clicks:
        _, _, t, w, f, ad, user, ip, country, event_id = raw[a["key"]]
        assert (t, w, f, ad, user, ip, country, event_id) == (
            a["time"], a["window_start"], a["filters"], a["ad_id"], a["user_id"], a["ip"], a["country"],
            a.get("event_id", "")), a
    assert invalid == {pos: a["reason"] for pos, a in native.items() if a["kind"] == "invalid"}
    assert any(r == "timestamp_in_future" for r in invalid.values())
    # The batch truth: distinct keys per (window, ad, filter), as the core keys them.
    want = defaultdict(set)
    for a in clicks:
        for f in a["filters"]:
            want[(a["window_start"], a["ad_id"], f)].add(a["key"])
    got = {}
    for line in ch("SELECT toUnixTimestamp64Milli(window_start), ad_id, filter_id, clicks "
                   "FROM adtally.batch_clicks_per_minute FORMAT JSONCompactEachRow").decode().splitlines():
        w, ad, f, c = json.loads(line)
        got[(int(w), ad, f)] = int(c)
    assert got == {k: len(v) for k, v in want.items()}
