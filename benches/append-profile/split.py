#!/usr/bin/env python3
"""Splits the CPU time of `huskies bench`'s append-p phase (signing on every core) into
signing and the rest, from a perf profile (docs/benchmarks.md, "Append at the signing rate",
session 9):

    perf record -o p.data -e cpu-clock -F 400 --call-graph dwarf,32768 \
        ./target/release/huskies bench --json --ops 100000 --interactive-ops 0
    perf script -i p.data -F comm,tid,time,ip,sym --no-inline > p.txt
    python3 benches/append-profile/split.py p.txt [N]   # N: also the N commonest stacks left over

The phase is found by its threads: every `execute_groups` call starts its own signing
threads (`sign_loop`), one per call in the append phase and one per core in append-p, so
append-p runs from the first time two signing threads overlap to the last signing sample.
Each sample in that window is put in the first category whose frame it holds; the raw
signing bursts between calls (`RawSigner::burst`) are left out. Figures are samples over
the samples inside Ed25519 signing on the signing threads.
"""
import collections
import sys

# (category, frame substring), first match wins; writer categories need `execute_groups`.
WRITER = [
    ("validate (payload_for)", "payload_for"),
    ("build op (encoding, op id)", "build_op"),
    ("payload effect (apply_payload)", "apply_payload"),
    ("admission, rest", "admit_local"),
    ("seal: encode changed records", "Working<S>::seal"),
    ("journal stage (entry encoding)", "Journal<S>::stage"),
    ("op log write_ops (segments)", "write_ops"),
    ("sled apply_batch (the group)", "apply_batch"),
    ("flush call", "flush"),
    ("journal committed", "Journal<S>::committed"),
    ("group write, rest (drops, author records)", "Sealed::write"),
    ("waiting for signatures (recv)", "recv"),
]


def samples(path):
    cur = None
    for line in open(path, errors="replace"):
        if not line.strip():
            if cur:
                yield cur
            cur = None
        elif line[0] not in "\t ":
            parts = line.split()
            cur = (" ".join(parts[:-2]), int(parts[-2]), float(parts[-1].rstrip(":")), [])
        else:
            frame = line.strip().split(" ", 1)
            cur[3].append(frame[-1])
    if cur:
        yield cur


def has(stack, s):
    return any(s in f for f in stack)


def category(comm, stack):
    if has(stack, "RawSigner::burst"):
        return None
    if has(stack, "sign_loop"):
        crypto = ("curve25519", "sha2", "ed25519", "NodeKey::sign")
        return "SIGN" if any(has(stack, c) for c in crypto) else "signing threads, rest"
    if "fold" in comm or has(stack, "journal::fold"):
        return "journal fold (folder thread)"
    if "sled" in comm:
        return "sled's threads (log writes, kernel)"
    if has(stack, "execute_groups"):
        for name, frame in WRITER:
            if has(stack, frame):
                return "writer: " + name
        return "writer: rest (validation, pipeline)"
    return "other (" + comm + ", unwinding lost)"


def main():
    all_samples = list(samples(sys.argv[1]))
    spans = {}
    for comm, tid, t, stack in all_samples:
        if has(stack, "sign_loop"):
            s = spans.setdefault(tid, [t, t])
            s[0], s[1] = min(s[0], t), max(s[1], t)
    spans = sorted(spans.values())
    start = next(spans[i - 1][0] for i in range(1, len(spans)) if spans[i][0] < spans[i - 1][1])
    end = max(e for _, e in spans)
    counts = collections.Counter()
    rest = collections.Counter()
    for comm, tid, t, stack in all_samples:
        if start <= t <= end:
            c = category(comm, stack)
            if c:
                counts[c] += 1
                if c.startswith("writer: rest") or c.startswith("other"):
                    rest[" < ".join(f[:70] for f in stack[:4])] += 1
    sign = counts.pop("SIGN")
    print(f"append-p window {end - start:.2f} s; signing samples {sign}")
    for c, n in counts.most_common():
        print(f"{c:40s} {n:5d} {n / sign:.3f}")
    print(f"{'total besides signing':40s} {sum(counts.values()):5d} {sum(counts.values()) / sign:.3f}")
    for s, n in rest.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 0):
        print(n, s)


if __name__ == "__main__":
    main()
