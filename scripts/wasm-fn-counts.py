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

With ``--disasm FILE``, the machine code of the same component
(``cargo run --release -p adtally-runtime --example precompile -- IN.wasm
OUT.cwasm``, then ``objdump -d --no-show-raw-insn OUT.cwasm > FILE``) adds
two columns per event: the epoch checks run (conditional branches to a
block that calls wasmtime's ``new_epoch``) and the instructions with a
stack operand (Cranelift's spills and reloads).
"""

import argparse
import bisect
import collections
import re
import sys

# How far past a branch's target the slow path of an epoch check calls
# wasmtime's `new_epoch` (it reloads the deadline and compares it first).
EPOCH_SLOW_PATH = 12


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


def read_disasm(path):
    """Per function name: its start address and its (address, instruction)s."""
    code = {}
    body = None
    with open(path) as f:
        for line in f:
            m = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
            if m:
                body = []
                code[m.group(2)] = (int(m.group(1), 16), body)
                continue
            m = re.match(r"^\s+([0-9a-f]+):\s+(.*)$", line)
            if m and body is not None:
                body.append((int(m.group(1), 16), m.group(2)))
    return code


def epoch_checks(body):
    """Addresses of the branches to an epoch check's slow path: code that
    calls wasmtime's ``new_epoch`` before any other call, jump, return or
    trap."""
    at = {addr: i for i, (addr, _) in enumerate(body)}
    found = []
    for addr, ins in body:
        m = re.match(r"j(?!mp)[a-z]+\s+([0-9a-f]+)", ins)
        i = at.get(int(m.group(1), 16)) if m else None
        if i is None:
            continue
        for _, t in body[i : i + EPOCH_SLOW_PATH]:
            if "new_epoch" in t:
                found.append(addr)
                break
            if t.startswith(("jmp", "ret", "ud2", "call")):
                break
    return found


def disasm_columns(body, runs):
    """Epoch checks run and instructions with a stack operand run, in a
    function's machine code; ``runs(addr)`` is how often ``addr`` ran."""
    checks = sum(runs(addr) for addr in epoch_checks(body))
    stack = sum(runs(addr) for addr, ins in body if "(%rsp)" in ins)
    return checks, stack


def main():
    cli = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cli.add_argument("callgrind_out")
    cli.add_argument("perf_map")
    cli.add_argument("events", type=float)
    cli.add_argument("--disasm", metavar="FILE", help="objdump -d of the precompiled component")
    args = cli.parse_args()
    code = read_disasm(args.disasm) if args.disasm else None
    funcs = read_map(args.perf_map)
    counts = read_counts(args.callgrind_out)
    events = args.events
    starts = [f[0] for f in funcs]
    per = collections.defaultdict(dict)
    for addr, n in counts.items():
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < funcs[i][0] + funcs[i][1]:
            per[i][addr] = n
    rows = sorted(
        (
            (sum(d.values()), d.get(funcs[i][0], 0), max(d.values()), i)
            for i, d in per.items()
        ),
        reverse=True,
    )
    head = f"{'instr/event':>12} {'entries':>8} {'max turns':>9}"
    if code is not None:
        head += f" {'epoch chk':>9} {'stack ops':>9}"
    print(head + "  function")
    for total, entries, most, i in rows[:40]:
        start, _, name = funcs[i]
        line = f"{total / events:12.1f} {entries / events:8.3f} {most / events:9.3f}"
        if code is not None:
            base, body = code.get(name, (start, []))
            ran = per[i]
            checks, stack = disasm_columns(body, lambda addr: ran.get(start + addr - base, 0))
            line += f" {checks / events:9.2f} {stack / events:9.1f}"
        print(f"{line}  {name[:100]}")


if __name__ == "__main__":
    main()
