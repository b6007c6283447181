"""Shared fixtures. The suite runs against the *installed* package (see test_install.py)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import time
from typing import Callable, Iterator, List

import pytest

import huskies

REPO = pathlib.Path(__file__).resolve().parents[3]


def huskies_bin() -> str:
    """The `huskies` CLI built by cargo: $HUSKIES_BIN, else target/{release,debug}/huskies."""
    env = os.environ.get("HUSKIES_BIN")
    if env:
        return env
    for profile in ("release", "debug"):
        p = REPO / "target" / profile / "huskies"
        if p.exists():
            return str(p)
    found = shutil.which("huskies")
    if found:
        return found
    raise RuntimeError("no huskies binary: build it with `cargo build -p huskies-cli` or set HUSKIES_BIN")


def wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def node(tmp_path: pathlib.Path) -> Iterator[huskies.Node]:
    n = huskies.Node.init(tmp_path / "a", cluster_name="test", label="alpha")
    yield n
    n.close()


@pytest.fixture
def processes() -> Iterator[List["subprocess.Popen[bytes]"]]:
    procs: List["subprocess.Popen[bytes]"] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def pair(tmp_path: pathlib.Path) -> "tuple[huskies.Node, huskies.Node]":
    """Two nodes of one cluster, both owned by this process: B joins A through an
    in-process daemon that is stopped again."""
    a_path, b_path = tmp_path / "pa", tmp_path / "pb"
    huskies.Node.init(a_path, cluster_name="pair", label="a").close()
    with huskies.Daemon.start(a_path, listen="127.0.0.1:0") as d:
        b = huskies.Node.join(b_path, d.ticket(), label="b", timeout=30)
    a = huskies.Node.open(a_path)
    return a, b
