"""The Python contract on one node: commands, queries, batches, errors, threads."""

from __future__ import annotations

import os
import pathlib
import threading
from typing import Any, List

import pytest

import huskies

from conftest import pair


def test_the_package_is_the_installed_one() -> None:
    # The suite must exercise what `pip install ./bindings/python` installed.
    assert "site-packages" in huskies.__file__, huskies.__file__
    assert os.path.exists(os.path.join(os.path.dirname(huskies.__file__), "py.typed"))
    assert os.path.exists(os.path.join(os.path.dirname(huskies.__file__), "__init__.pyi"))


def test_story_through_the_pipeline(node: huskies.Node) -> None:
    assert len(node.id) == 64 and node.id == node.id.lower()
    assert node.route == "local"
    node.add_story("42_fix_login", name="Fix login", body="details", depends_on=[])
    s = node.story("42_fix_login")
    assert (s.id, s.name, s.body, s.stage.kind, s.deleted) == ("42_fix_login", "Fix login", "details", "backlog", False)
    node.event("42_fix_login", "deps-met")
    node.claim("42_fix_login", ttl_secs=900)
    claimed = node.story("42_fix_login")
    assert claimed.claim is not None and claimed.claim.node == node.id
    node.event("42_fix_login", "gates-started")
    node.event("42_fix_login", "gates-passed", branch="feature/42", commits=3)
    s = node.story("42_fix_login")
    assert s.stage.kind == "merge"
    assert s.stage.feature_branch == "feature/42" and s.stage.commits_ahead == 3
    node.event("42_fix_login", "merge-succeeded", commit="abc123")
    assert node.story("42_fix_login").stage.merge_commit == "abc123"
    node.release("42_fix_login")
    assert node.story("42_fix_login").claim is None
    history = node.history("42_fix_login")
    assert [t.event for t in history] == ["deps-met", "gates-started", "gates-passed", "merge-succeeded"]
    assert getattr(history[0], "from") == "backlog" and history[0].to == "coding"
    assert history[-1].to_stage == "done" and history[-1].author == node.id
    assert all(t.lamport > 0 and not t.concurrent for t in history)


def test_stories_sorted_and_filtered(node: huskies.Node) -> None:
    for sid in ["3_c", "1_a", "2_b"]:
        node.add_story(sid)
    node.event("2_b", "deps-met")
    assert [s.id for s in node.stories()] == ["1_a", "2_b", "3_c"]
    assert [s.id for s in node.stories(stage="coding")] == ["2_b"]
    assert node.story("1_a").name == "1_a"
    with pytest.raises(huskies.InvalidArgument):
        node.stories(stage="nowhere")


def test_remove_verify_members_version_vector(node: huskies.Node) -> None:
    node.add_story("1_a")
    node.remove_story("1_a")
    assert node.story("1_a").deleted
    report = node.verify()
    assert report.ok and report.ops >= 2 and report.problems == []
    members = node.members()
    assert [(m.node_id, m.role, m.removed) for m in members] == [(node.id, "admin", False)]
    vv = node.version_vector()
    assert list(vv) == [node.id] and vv[node.id] == report.ops


def test_each_error_class_from_a_real_failure(tmp_path: pathlib.Path, node: huskies.Node) -> None:
    node.add_story("1_a")
    with pytest.raises(huskies.NotFound):
        node.story("nope")
    with pytest.raises(huskies.AlreadyExists):
        node.add_story("1_a")
    with pytest.raises(huskies.InvalidTransition):
        node.event("1_a", "accepted")
    with pytest.raises(huskies.InvalidArgument):
        node.add_story("bad id!")
    with pytest.raises(huskies.InvalidArgument):
        node.event("1_a", "no-such-event")
    with pytest.raises(huskies.InvalidArgument) as missing:
        node.event("1_a", "gates-passed", commits=1)
    assert "branch" in str(missing.value)
    with pytest.raises(huskies.HomeNotFound):
        huskies.Node.open(tmp_path / "nothing-here")
    with pytest.raises(huskies.HomeLocked):
        huskies.Node.open(tmp_path / "a")
    huskies.Node.init(tmp_path / "closed").close()
    with pytest.raises(huskies.AlreadyExists):
        huskies.Node.init(tmp_path / "closed")
    with pytest.raises(huskies.InvalidArgument):
        node.ingest(b"not a bundle at all")
    with huskies.Node.init(tmp_path / "stranger") as stranger:
        stranger.add_story("9_z")
        with pytest.raises(huskies.Corrupt):
            node.ingest(stranger.export_since())  # another cluster's ops
    with pytest.raises(huskies.Network):
        huskies.Node.join(tmp_path / "j", node_ticket_of_stopped_daemon(tmp_path), timeout=5)
    for cls in [huskies.NotFound, huskies.Closed, huskies.Network, huskies.Corrupt, huskies.IoError]:
        assert issubclass(cls, huskies.HuskiesError)
    assert issubclass(huskies.InvalidArgument, ValueError)


def node_ticket_of_stopped_daemon(tmp_path: pathlib.Path) -> str:
    home = tmp_path / "issuer"
    huskies.Node.init(home).close()
    with huskies.Daemon.start(home, listen="127.0.0.1:0") as d:
        ticket = d.ticket()
    return ticket


def test_claim_conflict_and_unauthorized(tmp_path: pathlib.Path) -> None:
    a, b = pair(tmp_path)
    a.add_story("1_a")
    b.ingest(a.export_since(b.version_vector()))
    a.claim("1_a", ttl_secs=600)
    b.ingest(a.export_since(b.version_vector()))
    with pytest.raises(huskies.ClaimConflict):
        b.claim("1_a")
    b_path = tmp_path / "pb"
    b.close()
    with huskies.Daemon.start(b_path, listen="127.0.0.1:0") as d:
        with pytest.raises(huskies.Unauthorized):
            d.ticket()  # b is a member, not an admin
    a.close()


def test_batch_is_one_group(node: huskies.Node) -> None:
    before = node.version_vector()[node.id]
    with node.batch():
        for i in range(1000):
            node.add_story(f"{i}_x", name="x")
        assert node.stories() == []  # nothing stored before the block ends
    assert len(node.stories()) == 1000
    assert node.version_vector()[node.id] == before + 1000


def test_batch_that_raises_stores_nothing(node: huskies.Node) -> None:
    with pytest.raises(RuntimeError):
        with node.batch():
            node.add_story("1_a")
            node.add_story("2_b")
            raise RuntimeError("changed my mind")
    assert node.stories() == []


def test_batch_with_a_refused_command_raises_its_class(node: huskies.Node) -> None:
    node.add_story("1_a")
    with pytest.raises(huskies.AlreadyExists) as e:
        with node.batch():
            node.add_story("2_b")
            node.add_story("1_a")
    assert "command 1 of the batch" in str(e.value)
    assert [s.id for s in node.stories()] == ["1_a", "2_b"]


def test_wrong_types_raise_type_or_value_error(tmp_path: pathlib.Path, node: huskies.Node) -> None:
    bad: Any = 42
    bad_commits: Any = "3"
    with pytest.raises(TypeError):
        node.add_story(bad)
    with pytest.raises(TypeError):
        node.add_story("1_a", depends_on="2_b")
    with pytest.raises(TypeError):
        node.event("1_a", "gates-passed", branch="b", commits=bad_commits)
    with pytest.raises(TypeError):
        node.claim("1_a", ttl_secs=True)
    with pytest.raises(ValueError):
        node.claim("1_a", ttl_secs=-1)
    with pytest.raises(TypeError):
        node.ingest(bad)
    with pytest.raises(TypeError):
        node.export_since(bad)
    with pytest.raises(TypeError):
        node.subscribe(bad)
    with pytest.raises(TypeError):
        huskies.Node.open(bad)
    with pytest.raises(ValueError):
        huskies.Node.open(tmp_path, timeout=0)
    with pytest.raises(TypeError):
        huskies.Daemon.start(tmp_path / "a", peers="ws://x")
    assert node.stories() == []


def test_closed_node_refuses_every_call(tmp_path: pathlib.Path) -> None:
    n = huskies.Node.init(tmp_path / "c")
    node_id = n.id
    with n:
        n.add_story("1_a")
    assert n.closed
    calls: List[Any] = [
        lambda: n.add_story("2_b"),
        lambda: n.event("1_a", "deps-met"),
        lambda: n.story("1_a"),
        lambda: n.stories(),
        lambda: n.history("1_a"),
        lambda: n.claim("1_a"),
        lambda: n.release("1_a"),
        lambda: n.remove_story("1_a"),
        lambda: n.verify(),
        lambda: n.members(),
        lambda: n.version_vector(),
        lambda: n.export_since({}),
        lambda: n.ingest(b""),
        lambda: n.subscribe(lambda e: None),
    ]
    for call in calls:
        with pytest.raises(huskies.Closed):
            call()
    n.close()  # twice is harmless
    # The home was released: it opens again, with what was written.
    with huskies.Node.open(tmp_path / "c") as again:
        assert again.id == node_id and again.story("1_a").name == "1_a"


def test_eight_threads_at_once(node: huskies.Node) -> None:
    errors: List[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(40):
                node.add_story(f"{t}_{i}")
                node.event(f"{t}_{i}", "deps-met")
                assert node.story(f"{t}_{i}").stage.kind == "coding"
                if i % 10 == 0:
                    with node.batch():
                        node.add_story(f"{t}_b{i}")
                        node.add_story(f"{t}_c{i}")
                    node.stories()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(node.stories()) == 8 * (40 + 8)
    assert len(node.stories(stage="coding")) == 8 * 40
    assert node.verify().ok
