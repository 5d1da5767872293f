"""Reading the conformance vectors' records (tests/vectors/*.json) in Python."""
import json


def payload_of(record):
    """A vector record's payload bytes: `x` (hex), `v` as text, or `v` as compact JSON."""
    if "x" in record:
        return bytes.fromhex(record["x"])
    if isinstance(record["v"], str):
        return record["v"].encode()
    return json.dumps(record["v"], separators=(",", ":")).encode()


def records(vector):
    """Every record in order: ((partition, offset, payload, record time), replayed),
    where `replayed` marks an offset below the partition's next one."""
    nxt = {}
    for step in vector["steps"]:
        for r in step.get("records", []):
            p = r.get("p", 0)
            o = r.get("o", nxt.get(p, 0))
            replayed = p in nxt and o < nxt[p]
            nxt[p] = max(nxt.get(p, 0), o + 1)
            yield (p, o, payload_of(r), r.get("t")), replayed
