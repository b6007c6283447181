"""Commands per second through Python, beside `huskies bench`'s `append_per_s`, in one run.

    python bindings/python/bench.py [--ops N] [--huskies PATH] [--json]

Measures, in temporary homes:
  - `python_single_per_s`: one command per call (each its own durable flush, like
    `huskies story add`), over N/20 commands;
  - `python_batch512_per_s`: the same command mix in `node.batch()` blocks of 512 (one
    atomic write and one flush per block), over N commands;
  - `append_per_s` from `huskies bench --json --ops N` (Rust: groups of 512, one signing
    thread pipelined against the writer);
and the ratios. Needs the installed `huskies` package and the release `huskies` binary.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

# This file sits beside the package's source: import the installed package, not the source
# tree (which has no compiled library).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import huskies  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]

# The life of one story: 6 commands (the Rust bench's workload is a 12-step life).
Step = Tuple[str, Dict[str, object]]


def story_steps(i: int) -> List[Tuple[str, str, Dict[str, object]]]:
    sid = f"{i}_bench"
    return [
        ("add", sid, {}),
        ("event", sid, {"event": "deps-met"}),
        ("event", sid, {"event": "gates-started"}),
        ("event", sid, {"event": "gates-passed", "branch": f"feature/{i}", "commits": 2}),
        ("event", sid, {"event": "merge-succeeded", "commit": f"c{i:08x}"}),
        ("event", sid, {"event": "accepted"}),
    ]


def workload(n: int) -> List[Tuple[str, str, Dict[str, object]]]:
    out: List[Tuple[str, str, Dict[str, object]]] = []
    i = 0
    while len(out) < n:
        out.extend(story_steps(i))
        i += 1
    return out[: n - n % 6] if n >= 6 else out[:n]


def run(node: huskies.Node, cmds: List[Tuple[str, str, Dict[str, object]]]) -> None:
    for kind, sid, args in cmds:
        if kind == "add":
            node.add_story(sid, name="bench story")
        else:
            a = dict(args)
            event = str(a.pop("event"))
            node.event(sid, event, **a)  # type: ignore[arg-type]


def python_single(tmp: pathlib.Path, n: int) -> float:
    cmds = workload(n)
    with huskies.Node.init(tmp / "single", cluster_name="bench", label="bench") as node:
        t = time.perf_counter()
        run(node, cmds)
        return len(cmds) / (time.perf_counter() - t)


def python_batch(tmp: pathlib.Path, n: int, size: int = 512) -> float:
    cmds = workload(n)
    with huskies.Node.init(tmp / "batch", cluster_name="bench", label="bench") as node:
        t = time.perf_counter()
        for start in range(0, len(cmds), size):
            with node.batch():
                run(node, cmds[start : start + size])
        elapsed = time.perf_counter() - t
        assert len(node.stories(stage="archived")) == len(cmds) // 6
        return len(cmds) / elapsed


def rust_bench(binary: str, n: int) -> Dict[str, float]:
    out = subprocess.run([binary, "bench", "--json", "--ops", str(n), "--interactive-ops", "0"], capture_output=True, check=True, timeout=1800)
    figures = json.loads(out.stdout)
    return {k: float(figures[k]) for k in ("append_per_s", "raw_sign_per_s")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=51200)
    ap.add_argument("--huskies", default=os.environ.get("HUSKIES_BIN") or str(REPO / "target/release/huskies"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not shutil.which(args.huskies) and not os.path.exists(args.huskies):
        print(f"no huskies binary at {args.huskies}: cargo build --release -p huskies-cli", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="huskies-pybench-") as d:
        tmp = pathlib.Path(d)
        rust = rust_bench(args.huskies, args.ops)
        batch = python_batch(tmp, args.ops)
        single = python_single(tmp, max(600, args.ops // 20))
    result = {
        "ops": args.ops,
        "python_single_per_s": round(single),
        "python_batch512_per_s": round(batch),
        "append_per_s": round(rust["append_per_s"]),
        "python_batch_vs_append": round(batch / rust["append_per_s"], 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>30}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
