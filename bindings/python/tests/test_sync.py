"""Events, ingest, routing through daemons, and daemons syncing over real WebSockets."""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import threading
from typing import Any, List

import pytest

import huskies

from conftest import huskies_bin, pair, wait_for


def collector() -> "tuple[List[huskies.Event], threading.Condition, Any]":
    got: List[huskies.Event] = []
    cond = threading.Condition()

    def callback(e: huskies.Event) -> None:
        with cond:
            got.append(e)
            cond.notify_all()

    return got, cond, callback


def test_events_by_callback_from_local_transitions(node: huskies.Node) -> None:
    got, cond, cb = collector()
    sub = node.subscribe(cb)
    node.add_story("1_a")  # a creation is not a transition
    node.event("1_a", "deps-met")
    node.event("1_a", "gates-started")
    wait_for(lambda: len(got) >= 2, what="two events")
    assert (got[0].story_id, got[0].before, got[0].after) == ("1_a", "backlog", "coding")
    assert (got[0].event, got[0].author, got[0].conflict) == ("deps-met", node.id, False)
    assert (got[1].before, got[1].after, got[1].event) == ("coding", "qa", "gates-started")
    sub.cancel()
    assert sub.cancelled
    node.event("1_a", "gates-failed", reason="flaky")
    assert node.story("1_a").stage.kind == "coding"
    assert len(got) == 2  # nothing after cancel


def test_a_raising_callback_is_reported_not_fatal(node: huskies.Node) -> None:
    seen: List[BaseException] = []
    got, cond, cb = collector()

    def bad(e: huskies.Event) -> None:
        raise ValueError("callback bug")

    sub = node.subscribe(bad, on_error=seen.append)
    with node.subscribe(cb):
        node.add_story("1_a")
        node.add_story("2_b")
        node.event("1_a", "deps-met")
        node.event("2_b", "deps-met")
        wait_for(lambda: len(got) == 2 and len(seen) == 2, what="both events on both subscriptions")
    assert all(isinstance(e, ValueError) for e in seen)
    assert sub.errors == 2
    sub.cancel()


def test_close_ends_subscriptions(tmp_path: pathlib.Path) -> None:
    n = huskies.Node.init(tmp_path / "n")
    got, cond, cb = collector()
    sub = n.subscribe(cb)
    n.add_story("1_a")
    n.event("1_a", "deps-met")
    wait_for(lambda: len(got) == 1)
    n.close()
    assert sub.cancelled


def test_events_from_ingested_transitions_and_convergence(tmp_path: pathlib.Path) -> None:
    a, b = pair(tmp_path)
    got, cond, cb = collector()
    b.subscribe(cb)
    for i in range(5):
        a.add_story(f"{i}_s", name=f"story {i}")
        a.event(f"{i}_s", "deps-met")
    n = b.ingest(a.export_since(b.version_vector()))
    assert n == 10
    wait_for(lambda: len(got) == 5, what="five ingested transitions")
    assert {e.story_id for e in got} == {f"{i}_s" for i in range(5)}
    assert all(e.author == a.id and (e.before, e.after) == ("backlog", "coding") for e in got)
    # and back: b's changes reach a
    b.event("1_s", "gates-started")
    b.add_story("9_b")
    assert a.ingest(b.export_since(a.version_vector())) == 2
    assert a.stories() == b.stories()
    assert a.version_vector() == b.version_vector()
    assert b.ingest(a.export_since(b.version_vector())) == 0  # nothing new either way
    a.close()
    b.close()


def test_events_by_async_for(node: huskies.Node) -> None:
    async def main() -> List[huskies.Envelope]:
        seen: List[huskies.Envelope] = []
        async with node.events() as stream:
            node.add_story("1_a")
            node.event("1_a", "deps-met")
            node.event("1_a", "gates-started")
            async for event in stream:
                seen.append(event)
                if len(seen) == 3:
                    break
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), timeout=20))
    assert [(e.type, e.story_id, e.before, e.after) for e in seen] == [
        ("org.huskies.story.added", "1_a", None, "backlog"),
        ("org.huskies.story.transitioned", "1_a", "backlog", "coding"),
        ("org.huskies.story.transitioned", "1_a", "coding", "qa"),
    ]


def test_async_stream_ends_when_the_node_closes(tmp_path: pathlib.Path) -> None:
    n = huskies.Node.init(tmp_path / "n")

    async def main() -> int:
        count = 0
        stream = n.events()
        n.add_story("1_a")
        n.event("1_a", "deps-met")
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, n.close)
        async for _ in stream:
            count += 1
        return count

    # story.added and story.transitioned
    assert asyncio.run(asyncio.wait_for(main(), timeout=20)) == 2


def test_garbage_and_forged_ingest_change_nothing(tmp_path: pathlib.Path) -> None:
    a, b = pair(tmp_path)
    a.add_story("1_a")
    a.event("1_a", "deps-met")
    bundle = a.export_since(b.version_vector())
    vv, stories = b.version_vector(), b.stories()
    for garbage in [b"", b"\x00" * 64, b"huskies" * 100, bundle[: len(bundle) // 2]]:
        with pytest.raises(huskies.HuskiesError):
            b.ingest(garbage)
    # Forged: every op's last bytes (its signature) flipped.
    forged = bytearray(bundle)
    forged[-1] ^= 0xFF
    forged[-40] ^= 0xFF
    with pytest.raises(huskies.HuskiesError):
        b.ingest(bytes(forged))
    assert b.version_vector()[a.id] <= vv.get(a.id, 0) + 1  # at most the unforged first op
    # A wholly foreign bundle (another cluster) is refused and stores nothing.
    with huskies.Node.init(tmp_path / "stranger") as stranger:
        stranger_id = stranger.id
        stranger.add_story("1_a", name="not yours")
        with pytest.raises(huskies.Corrupt):
            b.ingest(stranger.export_since({}))
    assert all(s.name != "not yours" for s in b.stories())
    b_vv = b.version_vector()
    assert stranger_id not in b_vv
    assert b.verify().ok
    # The genuine bundle still goes in afterwards.
    b.ingest(bundle)
    assert b.story("1_a").stage.kind == "coding"
    del stories, vv
    a.close()
    b.close()


def test_open_routes_through_an_in_process_daemon(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "d"
    huskies.Node.init(home, label="d").close()
    with huskies.Daemon.start(home, listen="127.0.0.1:0") as d:
        assert d.node.route == "in_process"
        routed = huskies.Node.open(home, timeout=10)
        assert routed.route == "daemon" and routed.id == d.node.id
        got, cond, cb = collector()
        routed.subscribe(cb)
        routed.add_story("1_a")
        with routed.batch():
            routed.add_story("2_b")
            routed.event("1_a", "deps-met")
            routed.event("2_b", "deps-met")
        d.node.event("1_a", "gates-started")
        assert d.node.story("1_a").stage.kind == "qa"
        assert routed.stories() == d.node.stories()
        assert routed.history("1_a") == d.node.history("1_a")
        with pytest.raises(huskies.NotFound):
            routed.story("nope")
        wait_for(lambda: len(got) == 3, what="routed events")
        assert [(e.story_id, e.after) for e in got] == [("1_a", "coding"), ("2_b", "coding"), ("1_a", "qa")]
    # The daemon stopped under live handles: they fail cleanly.
    with pytest.raises(huskies.Closed):
        d.node.stories()
    with pytest.raises(huskies.Network):
        routed.stories()
    routed.close()
    with huskies.Node.open(home) as local:
        assert local.route == "local" and len(local.stories()) == 2


def cli(home: pathlib.Path, *args: str) -> Any:
    out = subprocess.run(
        [huskies_bin(), "--home", str(home), "--json", *args],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def test_two_daemons_and_a_cli_daemon_converge(tmp_path: pathlib.Path, processes: List[Any]) -> None:
    a_home, b_home, c_home = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    huskies.Node.init(a_home, cluster_name="mesh", label="a").close()
    with huskies.Daemon.start(a_home, listen="127.0.0.1:0") as da:
        huskies.Node.join(b_home, da.ticket(), label="b", timeout=30).close()
        cli(c_home, "init", "--join", da.ticket(), "--label", "c")
        with huskies.Daemon.start(b_home, listen="127.0.0.1:0", peers=[da.url]) as db:
            proc = subprocess.Popen(
                [huskies_bin(), "--home", str(c_home), "--quiet", "daemon", "--listen", "127.0.0.1:0", "--peer", da.url],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            processes.append(proc)
            wait_for(lambda: (c_home / "daemon.sock").exists(), what="the CLI daemon's control socket")
            # c's home is owned by the CLI daemon: Python routes through it.
            c = huskies.Node.open(c_home, timeout=30)
            assert c.route == "daemon"
            da.node.add_story("1_from_a")
            db.node.add_story("2_from_b")
            c.add_story("3_from_c")
            cli(c_home, "story", "add", "4_from_cli")
            ids = ["1_from_a", "2_from_b", "3_from_c", "4_from_cli"]

            def converged() -> bool:
                return all([s.id for s in n.stories()] == ids for n in (da.node, db.node, c))

            wait_for(converged, timeout=60, what="three daemons converging")
            db.node.event("1_from_a", "deps-met")
            wait_for(
                lambda: [s["stage"]["kind"] for s in cli(c_home, "story", "list")["stories"]][0] == "coding",
                timeout=60,
                what="the CLI daemon to see b's event",
            )
            assert da.node.version_vector() == c.version_vector() or wait_for(
                lambda: da.node.version_vector() == c.version_vector(), timeout=30
            ) is None
            c.close()
            proc.terminate()
            assert proc.wait(timeout=30) == 0


def test_export_chunks_are_bounded_and_each_ingests_on_every_route(tmp_path: pathlib.Path) -> None:
    a, b = pair(tmp_path)
    body = "x" * 30_000
    with a.batch():
        for i in range(12):
            a.add_story(f"{i}_big", name=f"big {i}", body=body)
    limit = 70_000  # just over one op of the largest size: two of these stories per bundle
    with pytest.raises(huskies.InvalidArgument):
        next(a.export_chunks(b.version_vector(), max_bytes=1000))
    chunks = list(a.export_chunks(b.version_vector(), max_bytes=limit))
    assert len(chunks) >= 6 and all(len(c) <= limit for c in chunks), [len(c) for c in chunks]
    assert sum(b.ingest(c) for c in chunks) == 12
    assert b.version_vector() == a.version_vector() and b.stories() == a.stories()
    assert list(a.export_chunks(b.version_vector())) == []  # nothing left to send
    # The default bound holds this export in one bundle, the same ops as export_since.
    whole = list(a.export_chunks())
    assert len(whole) == 1 and len(whole[0]) == len(a.export_since())
    b.close()
    a.close()

    # Through a daemon that owns the home (in process, and routed over its control socket).
    home = tmp_path / "pa"
    with huskies.Daemon.start(home, listen="127.0.0.1:0") as d:
        routed = huskies.Node.open(home, timeout=10)
        assert routed.route == "daemon"
        for n in (d.node, routed):
            fresh = huskies.Node.open(tmp_path / "pb")
            vv = {k: v for k, v in fresh.version_vector().items() if k != n.id}
            got = list(n.export_chunks(vv, max_bytes=limit))
            assert len(got) >= 6 and all(len(c) <= limit for c in got)
            for c in got:
                fresh.ingest(c)  # b held all but the daemon's own latest ops: duplicates
            assert fresh.version_vector()[n.id] == n.version_vector()[n.id]
            fresh.close()
        routed.close()
