#!/usr/bin/env python3
"""Instructions per event in each compiled WebAssembly function.

callgrind counts the instructions the component's machine code runs, but
cannot name JIT code. wasmtime can (``ADTALLY_WASM_PERFMAP=1`` makes the
runtime write ``/tmp/perf-PID.map``); this joins the two.

    ADTALLY_WASM_PERFMAP=1 ADTALLY_BENCH_RUNS=1 ADTALLY_BENCH_CLICKS_ONLY=1 \\
    ADTALLY_BENCH_COMPONENT_ONLY=1 valgrind --tool=callgrind --dump-instr=yes \\
        --callgrind-out-file=cg.out target/release/deps/core-HASH
    scripts/wasm-fn-counts.py cg.out /tmp/perf-PID.map 3000000

The last argument divides the counts: with one run, the component pushes
the stream three times (the untimed warm-up, one warm run, one cold run),
so 3,000,000 events. Per function it prints instructions, entries and the
most-run instruction (a loop's turns), each per event.
"""

import bisect
import collections
import sys


def read_map(path):
    funcs = []
    with open(path) as f:
        for line in f:
            start, size, name = line.rstrip("\n").split(" ", 2)
            funcs.append((int(start, 16), int(size, 16), name))
    funcs.sort()
    return funcs


def read_counts(path):
    """Self instruction counts per address (needs ``--dump-instr=yes``)."""
    counts = collections.Counter()
    addr = 0
    after_call = False
    # Position columns before the cost: "instr", or "instr line".
    npos = 2
    with open(path) as f:
        for line in f:
            if line.startswith("positions:"):
                npos = len(line.split()) - 1
                if line.split()[1] != "instr":
                    sys.exit(f"{path}: run callgrind with --dump-instr=yes")
                continue
            if line.startswith("calls="):
                # The next cost line is the call's inclusive cost.
                after_call = True
                continue
            if line[0] not in "0123456789+-*":
                continue
            fields = line.split()
            if len(fields) <= npos:
                continue
            tok = fields[0]
            if tok[0] in "+-":
                addr += int(tok, 0)
            elif tok != "*":
                addr = int(tok, 0)
            if after_call:
                after_call = False
                continue
            counts[addr] += int(fields[npos])
    return counts


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    funcs = read_map(sys.argv[2])
    counts = read_counts(sys.argv[1])
    events = float(sys.argv[3])
    starts = [f[0] for f in funcs]
    per = collections.defaultdict(dict)
    for addr, n in counts.items():
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < funcs[i][0] + funcs[i][1]:
            per[i][addr] = n
    rows = sorted(
        (
            (sum(d.values()), d.get(funcs[i][0], 0), max(d.values()), funcs[i][2])
            for i, d in per.items()
        ),
        reverse=True,
    )
    print(f"{'instr/event':>12} {'entries':>8} {'max turns':>9}  function")
    for total, entries, most, name in rows[:40]:
        print(f"{total / events:12.1f} {entries / events:8.3f} {most / events:9.3f}  {name[:100]}")


if __name__ == "__main__":
    main()
