"""Lifecycle envelopes (`subscribe_events`, `events()`, `event_log`): the same JSON as
`huskies events` and the NATS bridge, from local and from ingested ops, on every route."""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import threading
from typing import Any, Dict, List

import pytest

import huskies

from conftest import huskies_bin, pair, wait_for

ENVELOPE_KEYS = {"id", "type", "version", "timestamp", "publisher", "attributes"}


def collector() -> "tuple[List[huskies.Envelope], Any]":
    got: List[huskies.Envelope] = []
    lock = threading.Lock()

    def callback(e: huskies.Envelope) -> None:
        with lock:
            got.append(e)

    return got, callback


def cli_events(home: pathlib.Path, since: str = "") -> List[Dict[str, Any]]:
    args = [huskies_bin(), "--home", str(home), "--json", "events"]
    if since:
        args += ["--since", since]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_envelopes_by_callback_equal_the_cli_s(tmp_path: pathlib.Path) -> None:
    a, b = pair(tmp_path)
    got, cb = collector()
    sub = b.subscribe_events(cb, since="")  # from the start of b's log
    for i in range(3):
        a.add_story(f"{i}_s", name=f"story {i}")
        a.event(f"{i}_s", "deps-met")
    a.claim("0_s", ttl_secs=60)
    assert b.ingest(a.export_since(b.version_vector())) == 7  # merged from a peer
    b.event("1_s", "gates-started")  # local to b
    b.claim("2_s", ttl_secs=60)  # no transition: seen by the log poll
    wait_for(lambda: any(e.type == "org.huskies.claim.taken" and e.story_id == "2_s" for e in got), what="b's claim")
    sub.cancel()
    types = [e.type for e in got]
    assert types.count("org.huskies.story.added") == 3
    assert types.count("org.huskies.story.transitioned") == 4
    assert types.count("org.huskies.claim.taken") == 2
    assert "org.huskies.member.added" in types  # b's admission, from the start of the log
    moved = [e for e in got if e.type == "org.huskies.story.transitioned" and e.author == a.id]
    assert {(e.story_id, e.before, e.after, e.event) for e in moved} == {
        (f"{i}_s", "backlog", "coding", "deps-met") for i in range(3)
    }
    mine = [e for e in got if e.type == "org.huskies.story.transitioned" and e.author == b.id]
    assert [(e.story_id, e.after, e.attributes["from"], e.attributes["concurrent"]) for e in mine] == [
        ("1_s", "qa", {"kind": "coding"}, False)
    ]
    assert all(set(e.to_dict()) == ENVELOPE_KEYS and e.publisher == "huskies" for e in got)
    # The same log read without following, and by the CLI: the same envelopes, same order.
    logged = list(b.event_log())
    assert [e.to_dict() for e in logged] == [e.to_dict() for e in got]
    assert [e.cursor for e in logged] == [e.cursor for e in got]
    a.close()
    b_home = tmp_path / "pb"
    b.close()
    cli = cli_events(b_home)
    assert [{k: v for k, v in line.items() if k != "cursor"} for line in cli] == [e.to_dict() for e in got]
    assert [line["cursor"] for line in cli] == [e.cursor for e in got]
    # Resuming from a cursor gives the rest.
    with huskies.Node.open(b_home) as again:
        rest = list(again.event_log(since=got[4].cursor))
    assert [e.id for e in rest] == [e.id for e in got[5:]]


def test_envelopes_from_now_on_and_a_bad_cursor(node: huskies.Node) -> None:
    node.add_story("1_a")
    got, cb = collector()
    with node.subscribe_events(cb):  # since=None: only what is committed from now on
        node.event("1_a", "deps-met")
        wait_for(lambda: len(got) == 1, what="one envelope")
    assert (got[0].type, got[0].story_id, got[0].after) == ("org.huskies.story.transitioned", "1_a", "coding")
    with pytest.raises(huskies.InvalidArgument):
        node.subscribe_events(cb, since="not a cursor")
    with pytest.raises(TypeError):
        node.subscribe_events(cb, since=3)  # type: ignore[arg-type]
    with pytest.raises(huskies.InvalidArgument):
        list(node.event_log(since="zz:1"))


def test_envelopes_by_async_for_resume_from_a_cursor(node: huskies.Node) -> None:
    node.add_story("1_a")
    node.event("1_a", "deps-met")
    first = list(node.event_log())
    assert [e.type for e in first][-2:] == ["org.huskies.story.added", "org.huskies.story.transitioned"]

    async def main() -> List[huskies.Envelope]:
        seen: List[huskies.Envelope] = []
        async with node.events(since=first[-2].cursor) as stream:  # after the added
            node.event("1_a", "gates-started")
            async for e in stream:
                seen.append(e)
                if len(seen) == 2:
                    break
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), timeout=20))
    assert [(e.type, e.after) for e in seen] == [
        ("org.huskies.story.transitioned", "coding"),
        ("org.huskies.story.transitioned", "qa"),
    ]
    assert seen[0].id == first[-1].id


def test_envelopes_through_daemons(tmp_path: pathlib.Path) -> None:
    home = tmp_path / "d"
    huskies.Node.init(home, cluster_name="d", label="d").close()
    with huskies.Daemon.start(home, listen="127.0.0.1:0") as d:
        in_process: List[huskies.Envelope] = []
        routed_got, routed_cb = collector()
        d.node.subscribe_events(in_process.append)
        routed = huskies.Node.open(home, timeout=30)  # through the daemon's control socket
        assert routed.route == "daemon"
        routed.subscribe_events(routed_cb)
        routed.add_story("1_a")
        d.node.event("1_a", "deps-met")
        routed.claim("1_a", ttl_secs=30)
        for seen in (in_process, routed_got):
            wait_for(lambda: len(seen) == 3, what="three envelopes")
        assert [e.to_dict() for e in routed_got] == [e.to_dict() for e in in_process]
        assert [e.type for e in routed_got] == [
            "org.huskies.story.added",
            "org.huskies.story.transitioned",
            "org.huskies.claim.taken",
        ]
        assert [e.id for e in routed.event_log()][-3:] == [e.id for e in routed_got]
        routed.close()
