"""huskies from Python: the state layer's nodes, stories, pipeline events and sync.

The Rust library does the work (through uniffi); this layer gives it a Python shape:
keyword arguments, context managers, ``batch()``, exception classes, ``async for`` over
events. See docs/python.md for the whole API and a worked example.
"""

from __future__ import annotations

import asyncio
import atexit
import json as _json
import os
import socket
import sys
import threading
import traceback
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Type,
    Union,
)
from contextlib import contextmanager

from . import _native as _n

__all__ = [
    "Node",
    "Daemon",
    "Subscription",
    "EventStream",
    "Story",
    "Stage",
    "Claim",
    "Transition",
    "Member",
    "VerifyReport",
    "Event",
    "Envelope",
    "HuskiesError",
    "NotFound",
    "AlreadyExists",
    "InvalidTransition",
    "InvalidArgument",
    "ClaimConflict",
    "HomeLocked",
    "HomeNotFound",
    "Unauthorized",
    "Corrupt",
    "Network",
    "Closed",
    "IoError",
    "EVENT_NAMES",
    "STAGE_KINDS",
    "EXPORT_BUNDLE_BYTES",
]

#: Pipeline event names (``shared/spec/cli.md``), as the Rust core defines them.
EVENT_NAMES = tuple(_n.event_names())

#: Stage kinds, in pipeline order.
STAGE_KINDS = tuple(_n.stage_kinds())

# ---------------------------------------------------------------------------------------
# Errors


class HuskiesError(Exception):
    """Base of every error the library raises. ``str(error)`` is the human message;
    ``kind`` is the contract's kind (``not_found``, ...)."""

    kind = "error"


class NotFound(HuskiesError):
    """Something asked for does not exist (a story, a home's file)."""

    kind = "not_found"


class AlreadyExists(HuskiesError):
    """Something to be created exists already."""

    kind = "already_exists"


class InvalidTransition(HuskiesError):
    """The pipeline event is not allowed from the story's stage; nothing was written."""

    kind = "invalid_transition"


class InvalidArgument(HuskiesError, ValueError):
    """An argument is malformed or out of range (also a ``ValueError``)."""

    kind = "invalid_argument"


class ClaimConflict(HuskiesError):
    """Another node holds a live claim on the story."""

    kind = "claim_conflict"


class HomeLocked(HuskiesError):
    """Another process owns the home and no daemon answers for it."""

    kind = "home_locked"


class HomeNotFound(HuskiesError):
    """No huskies home at the path."""

    kind = "home_not_found"


class Unauthorized(HuskiesError):
    """This node may not do that (not an admin, an unknown or used ticket, ...)."""

    kind = "unauthorized"


class Corrupt(HuskiesError):
    """Stored or received data failed an integrity check (forged or damaged ops)."""

    kind = "corrupt"


class Network(HuskiesError):
    """A daemon or peer did not answer, or went away."""

    kind = "network"


class Closed(HuskiesError):
    """The node (or its daemon) was closed before the call."""

    kind = "closed"


class IoError(HuskiesError):
    """The store failed to read or write (a full disk, ...). Nothing was acknowledged."""

    kind = "io"


_BY_KIND: Dict[str, Type[HuskiesError]] = {
    cls.kind: cls
    for cls in (
        NotFound,
        AlreadyExists,
        InvalidTransition,
        InvalidArgument,
        ClaimConflict,
        HomeLocked,
        HomeNotFound,
        Unauthorized,
        Corrupt,
        Network,
        Closed,
        IoError,
    )
}

# The native error's variant names → our classes.
_BY_VARIANT: Dict[str, Type[HuskiesError]] = {
    "NotFound": NotFound,
    "AlreadyExists": AlreadyExists,
    "InvalidTransition": InvalidTransition,
    "InvalidArgument": InvalidArgument,
    "ClaimConflict": ClaimConflict,
    "HomeLocked": HomeLocked,
    "HomeNotFound": HomeNotFound,
    "Unauthorized": Unauthorized,
    "Corrupt": Corrupt,
    "Network": Network,
    "Closed": Closed,
    "Io": IoError,
}


@contextmanager
def _errors() -> Iterator[None]:
    """Re-raises the native error as the contract's exception class."""
    try:
        yield
    except _n.HuskiesError as e:
        cls = _BY_VARIANT.get(type(e).__name__, HuskiesError)
        raise cls(str(e)) from None


# ---------------------------------------------------------------------------------------
# Argument checks: wrong types raise TypeError, bad values ValueError, before any native call.


def _str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return value


def _opt_str(name: str, value: object) -> Optional[str]:
    return None if value is None else _str(name, value)


def _int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _opt_int(name: str, value: object, low: int, high: int) -> Optional[int]:
    return None if value is None else _int(name, value, low, high)


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return float(value)


def _path(value: object) -> str:
    if isinstance(value, (str, os.PathLike)):
        p = os.fspath(value)
        if isinstance(p, str):
            return p
    raise TypeError(f"path must be a str or os.PathLike[str], not {type(value).__name__}")


_U32 = 2**32 - 1
_U64 = 2**64 - 1

EXPORT_BUNDLE_BYTES = 4 << 20
"""``export_chunks``' default bundle size: 4 MiB, as ``huskies export`` writes."""


def _version_vector(version_vector: Optional[Mapping[str, int]]) -> Dict[str, int]:
    have: Dict[str, int] = {}
    if version_vector is not None:
        if not isinstance(version_vector, Mapping):
            raise TypeError("version_vector must be a mapping of author id to seq")
        for k, v in version_vector.items():
            have[_str("author id", k)] = _int("seq", v, 0, _U64)
    return have

# ---------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Stage:
    """A story's stage. ``kind`` is the contract's stage kind; only that kind's fields are
    set (``commits_ahead`` for ``merge``, ``merged_at`` for ``done``, ...)."""

    kind: str
    feature_branch: Optional[str] = None
    commits_ahead: Optional[int] = None
    failure_kind: Optional[str] = None
    reason: Optional[str] = None
    merged_at: Optional[str] = None
    merge_commit: Optional[str] = None
    archived_at: Optional[str] = None
    archive_reason: Optional[str] = None
    superseded_by: Optional[str] = None


@dataclass(frozen=True)
class Claim:
    """A live claim: the holder's node id, RFC 3339 times, and whether it is confirmed
    (every alive member has seen it, so none can win against it)."""

    node: str
    claimed_at: str
    expires_at: str
    confirmed: bool = False


@dataclass(frozen=True)
class Story:
    """A story as the node's projection has it."""

    id: str
    name: str
    body: Optional[str]
    depends_on: List[str]
    stage: Stage
    claim: Optional[Claim]
    deleted: bool
    conflicts: List[str]


@dataclass(frozen=True)
class Transition:
    """One transition of a story's history. ``from``/``to`` are stage kinds (``from`` is a
    Python keyword, so it is ``from_stage``; ``getattr(t, "from")`` works too)."""

    op_id: str
    author: str
    lamport: int
    from_stage: str
    to_stage: str
    event: str
    concurrent: bool

    @property
    def to(self) -> str:
        """The stage kind after the transition."""
        return self.to_stage

    def __getattr__(self, name: str) -> Any:
        if name == "from":
            return self.from_stage
        raise AttributeError(name)


@dataclass(frozen=True)
class Member:
    """A member of the cluster."""

    node_id: str
    role: str
    removed: bool


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found: ``ok``, ops checked, problems in words."""

    ok: bool
    ops: int
    problems: List[str]


@dataclass(frozen=True)
class Event:
    """A committed transition (local or remote): the story, the stage kind before
    (``None`` for a new story) and after, the event name and its author."""

    story_id: str
    before: Optional[str]
    after: str
    event: Optional[str]
    author: Optional[str]
    conflict: bool


@dataclass(frozen=True)
class Envelope:
    """A lifecycle event: the envelope ``huskies events`` prints and the NATS bridge
    publishes (``docs/events.md``), for every committed change with an event (a story
    added or removed, a pipeline transition local or merged, a claim taken, released or
    lost, a member added, removed or rotated). ``cursor`` resumes just after it
    (``node.events(since=envelope.cursor)``)."""

    id: str
    type: str
    version: str
    timestamp: str
    publisher: str
    attributes: Dict[str, Any]
    cursor: str

    def to_dict(self) -> Dict[str, Any]:
        """The envelope as its JSON object (without the cursor)."""
        return {
            "id": self.id,
            "type": self.type,
            "version": self.version,
            "timestamp": self.timestamp,
            "publisher": self.publisher,
            "attributes": self.attributes,
        }

    @property
    def story_id(self) -> Optional[str]:
        """``attributes["story"]``: the story, for story and claim events."""
        return _text(self.attributes.get("story"))

    @property
    def before(self) -> Optional[str]:
        """The stage kind before a transition (``attributes["from"]["kind"]``)."""
        return _kind(self.attributes.get("from"))

    @property
    def after(self) -> Optional[str]:
        """The stage kind after a transition or a story's creation."""
        return _kind(self.attributes.get("to"))

    @property
    def event(self) -> Optional[str]:
        """The pipeline event name of a transition."""
        return _text(self.attributes.get("event"))

    @property
    def author(self) -> Optional[str]:
        """The author of the op that caused it."""
        return _text(self.attributes.get("author"))


def _text(value: object) -> Optional[str]:
    return None if value is None else str(value)


def _kind(stage: object) -> Optional[str]:
    return _text(stage.get("kind")) if isinstance(stage, dict) else None


def _envelope(text: str, cursor: str) -> Envelope:
    d = _json.loads(text)
    return Envelope(
        id=d["id"],
        type=d["type"],
        version=d["version"],
        timestamp=d["timestamp"],
        publisher=d["publisher"],
        attributes=d["attributes"],
        cursor=cursor,
    )


def _stage(s: Any) -> Stage:
    return Stage(
        kind=s.kind,
        feature_branch=s.feature_branch,
        commits_ahead=s.commits_ahead,
        failure_kind=s.failure_kind,
        reason=s.reason,
        merged_at=s.merged_at,
        merge_commit=s.merge_commit,
        archived_at=s.archived_at,
        archive_reason=s.archive_reason,
        superseded_by=s.superseded_by,
    )


def _story(s: Any) -> Story:
    c = s.claim
    return Story(
        id=s.id,
        name=s.name,
        body=s.body,
        depends_on=list(s.depends_on),
        stage=_stage(s.stage),
        claim=None if c is None else Claim(
            node=c.node, claimed_at=c.claimed_at, expires_at=c.expires_at, confirmed=c.confirmed
        ),
        deleted=s.deleted,
        conflicts=list(s.conflicts),
    )


def _event(e: Any) -> Event:
    return Event(
        story_id=e.story_id,
        before=e.before,
        after=e.after,
        event=e.event,
        author=e.author,
        conflict=e.conflict,
    )


# ---------------------------------------------------------------------------------------
# Subscriptions

EventCallback = Callable[[Event], object]
ErrorCallback = Callable[[BaseException], object]


def _report(error: BaseException) -> None:
    sys.stderr.write("huskies: a subscribe callback raised (delivery goes on):\n")
    traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)


EnvelopeCallback = Callable[[Envelope], object]


class _Listener:
    """The native listener (of transitions or of envelopes): runs on the library's delivery
    thread; never raises."""

    def __init__(self, callback: Callable[[Any], object], on_error: Optional[ErrorCallback]) -> None:
        self._callback = callback
        self._on_error = on_error
        self.errors = 0

    def _deliver(self, make: Callable[[], object]) -> None:
        try:
            self._callback(make())
        except BaseException as e:  # noqa: BLE001 - a callback must never kill delivery
            self.errors += 1
            try:
                (self._on_error or _report)(e)
            except BaseException:  # noqa: BLE001
                pass

    def on_event(self, event: Any) -> None:
        self._deliver(lambda: _event(event))

    def on_envelope(self, envelope: str, cursor: str) -> None:
        self._deliver(lambda: _envelope(envelope, cursor))


class Subscription:
    """A live subscription; ``cancel()`` stops delivery (also on ``with`` exit)."""

    def __init__(
        self,
        native: Any,
        listener: _Listener,
        on_cancel: Optional[Callable[[], None]] = None,
    ) -> None:
        self._native = native
        self._listener = listener
        self._on_cancel = on_cancel

    @property
    def cancelled(self) -> bool:
        """True once cancelled (or its node closed)."""
        return bool(self._native.is_cancelled())

    @property
    def errors(self) -> int:
        """How many times the callback raised."""
        return self._listener.errors

    def cancel(self) -> None:
        """Stops delivery: after this returns the callback is not called again."""
        self._native.cancel()
        if self._on_cancel is not None:
            self._on_cancel()

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.cancel()


_END = object()


class EventStream:
    """``async for envelope in node.events()``: the node's lifecycle envelopes for asyncio
    code (the same as ``node.subscribe_events``). Ends when closed (``aclose()``,
    ``async with`` exit) or when its node is closed."""

    def __init__(self, node: "Node", since: Optional[str]) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: "asyncio.Queue[object]" = asyncio.Queue()
        self._done = False
        self._sub = node.subscribe_events(self._deliver, since=since)
        self._sub._on_cancel = self._end

    def _put(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:
            pass  # the loop is closed: nobody is listening any more

    def _deliver(self, envelope: Envelope) -> None:
        self._put(envelope)

    def _end(self) -> None:
        self._put(_END)

    def __aiter__(self) -> "EventStream":
        return self

    async def __anext__(self) -> Envelope:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._done = True
            raise StopAsyncIteration
        assert isinstance(item, Envelope)
        return item

    async def aclose(self) -> None:
        """Stops the stream."""
        self._done = True
        self._sub.cancel()

    async def __aenter__(self) -> "EventStream":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.aclose()


# ---------------------------------------------------------------------------------------
# Nodes

_open_handles: "weakref.WeakSet[Union[Node, Daemon]]" = weakref.WeakSet()


def _default_label() -> str:
    return os.environ.get("HOSTNAME") or socket.gethostname() or "node"


class Node:
    """A handle on a huskies node. Make one with ``Node.init``, ``Node.open`` or
    ``Node.join`` (or ``Daemon.node``). Safe to use from several threads; every call after
    ``close()`` raises ``Closed``."""

    def __init__(self, native: Any) -> None:
        self._native = native
        self._local = threading.local()
        self._subs: "weakref.WeakSet[Subscription]" = weakref.WeakSet()
        self._info: Optional[Any] = None
        _open_handles.add(self)

    # -- making one

    @classmethod
    def init(cls, path: Union[str, "os.PathLike[str]"], cluster_name: Optional[str] = None, label: Optional[str] = None) -> "Node":
        """Creates a home at ``path``: a node key (0600) and a new cluster whose first admin
        is this node."""
        p = _path(path)
        name = _opt_str("cluster_name", cluster_name) or "huskies"
        lab = _opt_str("label", label) or _default_label()
        with _errors():
            return cls(_n.NativeNode.init(p, name, lab))

    @classmethod
    def open(cls, path: Union[str, "os.PathLike[str]"], *, timeout: float = 60.0) -> "Node":
        """Opens an existing home. If a daemon owns it, every call goes through that daemon
        (same results), each waiting at most ``timeout`` seconds for its answer."""
        p = _path(path)
        t = _seconds("timeout", timeout)
        with _errors():
            return cls(_n.NativeNode.open(p, int(t * 1000)))

    @classmethod
    def join(
        cls,
        path: Union[str, "os.PathLike[str]"],
        ticket: str,
        label: Optional[str] = None,
        *,
        timeout: float = 600.0,
    ) -> "Node":
        """Creates a home at ``path`` and redeems a join ticket with the daemon that issued it
        (which must be running)."""
        p = _path(path)
        tk = _str("ticket", ticket)
        lab = _opt_str("label", label) or _default_label()
        t = _seconds("timeout", timeout)
        with _errors():
            return cls(_n.NativeNode.join(p, tk, lab, int(t * 1000)))

    # -- ids

    def _ids(self) -> Any:
        if self._info is None:
            with _errors():
                self._info = self._native.info()
        return self._info

    @property
    def id(self) -> str:
        """This node's id, lowercase hex."""
        return str(self._ids().node_id)

    @property
    def cluster_id(self) -> str:
        """Its cluster's id, lowercase hex."""
        return str(self._ids().cluster_id)

    @property
    def route(self) -> str:
        """Where calls run: ``local``, ``daemon`` (through the daemon owning the home) or
        ``in_process`` (a ``Daemon`` in this process)."""
        return str(self._ids().route)

    # -- commands
    #
    # A command is a dict in the typed API's wire form (``{"command": "add_story", ...}``);
    # a group crosses the FFI as one JSON array built by ``json.dumps`` (C code) and parsed
    # once in Rust, instead of one record per command packed field by field in Python.

    def _run(self, command: Dict[str, Any]) -> None:
        pending: Optional[List[Dict[str, Any]]] = getattr(self._local, "batch", None)
        if pending is not None:
            pending.append(command)
            return
        self._group([command])

    def _group(self, commands: List[Dict[str, Any]]) -> None:
        text = _json.dumps(commands, separators=(",", ":"))
        with _errors():
            refusals = self._native.execute_group_json(text)
        if refusals:
            r = refusals[0]
            cls = _BY_KIND.get(r.kind, HuskiesError)
            prefix = "" if len(commands) == 1 else f"command {r.index} of the batch: "
            more = "" if len(refusals) == 1 else f" ({len(refusals) - 1} more refused)"
            raise cls(f"{prefix}{r.message}{more}")

    def add_story(
        self,
        story_id: str,
        name: Optional[str] = None,
        body: Optional[str] = None,
        depends_on: Iterable[str] = (),
    ) -> None:
        """A new story in the backlog (``name`` defaults to the id)."""
        sid = _str("story_id", story_id)
        if isinstance(depends_on, str):
            raise TypeError("depends_on must be a list of story ids, not a str")
        command: Dict[str, Any] = {
            "command": "add_story",
            "id": sid,
            "name": sid if name is None else _str("name", name),
        }
        if body is not None:
            command["body"] = _str("body", body)
        if depends_on:
            command["depends_on"] = [_str("depends_on item", d) for d in depends_on]
        self._run(command)

    def event(
        self,
        story_id: str,
        event: str,
        *,
        branch: Optional[str] = None,
        commits: Optional[int] = None,
        commit: Optional[str] = None,
        kind: Optional[str] = None,
        reason: Optional[str] = None,
        by: Optional[str] = None,
    ) -> None:
        """Applies a pipeline event by name (see ``EVENT_NAMES``), with the arguments it
        needs (``gates-passed``: branch and commits; ``merge-succeeded``: commit; ...)."""
        command: Dict[str, Any] = {
            "command": "event",
            "id": _str("story_id", story_id),
            "event": _str("event", event),
        }
        args: Dict[str, Any] = {}
        if branch is not None:
            args["branch"] = _str("branch", branch)
        if commits is not None:
            args["commits"] = _int("commits", commits, 0, _U32)
        if commit is not None:
            args["commit"] = _str("commit", commit)
        if kind is not None:
            args["kind"] = _str("kind", kind)
        if reason is not None:
            args["reason"] = _str("reason", reason)
        if by is not None:
            args["by"] = _str("by", by)
        if args:
            command["args"] = args
        self._run(command)

    def claim(self, story_id: str, ttl_secs: int = 600) -> None:
        """Claims (or renews this node's claim on) a story for ``ttl_secs``."""
        self._run(
            {"command": "claim", "id": _str("story_id", story_id), "ttl_secs": _int("ttl_secs", ttl_secs, 0, _U32)}
        )

    def release(self, story_id: str) -> None:
        """Gives up this node's claim."""
        self._run({"command": "release", "id": _str("story_id", story_id)})

    def remove_story(self, story_id: str) -> None:
        """Tombstones a story."""
        self._run({"command": "remove", "id": _str("story_id", story_id)})

    @contextmanager
    def batch(self) -> Iterator["Node"]:
        """Commands inside the block (on this thread) are committed together at its end: one
        atomic write, one flush. If the block raises, nothing of it is stored. A command the
        core refuses raises at the end (the others were committed)."""
        outer: Optional[List[Dict[str, Any]]] = getattr(self._local, "batch", None)
        if outer is not None:
            yield self  # nested: part of the outer batch
            return
        pending: List[Dict[str, Any]] = []
        self._local.batch = pending
        try:
            yield self
        finally:
            self._local.batch = None
        if pending:
            self._group(pending)

    # -- queries

    def story(self, story_id: str) -> Story:
        """One story."""
        sid = _str("story_id", story_id)
        with _errors():
            return _story(self._native.story(sid))

    def stories(self, stage: Optional[str] = None) -> List[Story]:
        """Every story (of one stage kind, if given), sorted by id."""
        st = _opt_str("stage", stage)
        with _errors():
            return [_story(s) for s in self._native.stories(st)]

    def history(self, story_id: str) -> List[Transition]:
        """A story's transitions in merge order."""
        sid = _str("story_id", story_id)
        with _errors():
            return [
                Transition(
                    op_id=t.op_id,
                    author=t.author,
                    lamport=t.lamport,
                    from_stage=t.from_stage,
                    to_stage=t.to_stage,
                    event=t.event,
                    concurrent=t.concurrent,
                )
                for t in self._native.history(sid)
            ]

    def verify(self) -> VerifyReport:
        """Re-checks every stored op (hash chains, signatures, forks)."""
        with _errors():
            r = self._native.verify()
        return VerifyReport(ok=r.ok, ops=r.ops, problems=list(r.problems))

    def members(self) -> List[Member]:
        """The cluster's members."""
        with _errors():
            return [Member(node_id=m.node_id, role=m.role, removed=m.removed) for m in self._native.members()]

    def version_vector(self) -> Dict[str, int]:
        """Author id → highest contiguous seq held."""
        with _errors():
            return dict(self._native.version_vector())

    # -- moving ops without a network

    def export_since(self, version_vector: Optional[Mapping[str, int]] = None) -> bytes:
        """Signed ops that the holder of ``version_vector`` lacks (all, if None), as bytes
        (one bundle, the whole export in memory: for a large history use ``export_chunks``)."""
        have = _version_vector(version_vector)
        with _errors():
            return bytes(self._native.export_since(have))

    def export_chunks(
        self, version_vector: Optional[Mapping[str, int]] = None, max_bytes: int = EXPORT_BUNDLE_BYTES
    ) -> Iterator[bytes]:
        """What ``export_since`` returns, as bundles of at most ``max_bytes`` each, read from
        the store one at a time (one bundle in memory at a time). Each bundle is accepted as
        it is by ``ingest``; written one after another they form the file ``huskies export``
        writes."""
        have = _version_vector(version_vector)
        limit = _int("max_bytes", max_bytes, 1, _U64)
        evidence_sent: Optional[int] = None
        while True:
            with _errors():
                chunk = self._native.export_chunk(have, evidence_sent, limit)
            if chunk.bundle is None:
                return
            have = dict(chunk.have)
            evidence_sent = chunk.evidence_sent
            yield bytes(chunk.bundle)

    def ingest(self, data: bytes) -> int:
        """Verifies and merges ops from ``export_since``; returns how many were new. Raises
        ``Corrupt`` when any op was refused (forged, damaged, from another cluster); ops
        that verified are kept."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        with _errors():
            report = self._native.ingest(bytes(data))
        if report.rejected:
            raise Corrupt(
                f"{len(report.rejected)} op(s) refused ({report.applied} new op(s) kept): "
                + "; ".join(report.rejected[:5])
            )
        return int(report.applied)

    def ticket(self, ttl_secs: int = 600) -> str:
        """A one-time join ticket (admins only; the node must be served by a daemon)."""
        t = _int("ttl_secs", ttl_secs, 1, _U64)
        with _errors():
            return str(self._native.ticket(t))

    # -- events

    def subscribe(self, callback: EventCallback, *, on_error: Optional[ErrorCallback] = None) -> Subscription:
        """Calls ``callback(event)`` on every committed transition, local or remote, from a
        delivery thread of the library's own. A callback that raises is reported (to
        ``on_error``, else stderr) and delivery goes on."""
        if not callable(callback):
            raise TypeError("callback must be callable")
        if on_error is not None and not callable(on_error):
            raise TypeError("on_error must be callable")
        listener = _Listener(callback, on_error)
        with _errors():
            native = self._native.subscribe(listener)
        sub = Subscription(native, listener)
        self._subs.add(sub)
        return sub

    def subscribe_events(
        self,
        callback: EnvelopeCallback,
        *,
        since: Optional[str] = None,
        on_error: Optional[ErrorCallback] = None,
    ) -> Subscription:
        """Calls ``callback(envelope)`` for every lifecycle event of the local log after
        ``since`` (a cursor; ``""``: the start of the log; ``None``: only events committed
        from now on), local or merged from another node, in log order, from a delivery
        thread of the library's own: the envelopes of ``huskies events --follow``. A
        callback that raises is reported (to ``on_error``, else stderr) and delivery goes
        on."""
        if not callable(callback):
            raise TypeError("callback must be callable")
        if on_error is not None and not callable(on_error):
            raise TypeError("on_error must be callable")
        cursor = _opt_str("since", since)
        listener = _Listener(callback, on_error)
        with _errors():
            native = self._native.subscribe_envelopes(cursor, listener)
        sub = Subscription(native, listener)
        self._subs.add(sub)
        return sub

    def events(self, since: Optional[str] = None) -> EventStream:
        """The lifecycle envelopes for asyncio code: ``async for envelope in
        node.events(): ...`` (``since`` as in ``subscribe_events``). Call it from a running
        event loop."""
        return EventStream(self, _opt_str("since", since))

    def event_log(self, since: str = "") -> Iterator[Envelope]:
        """The lifecycle envelopes of the local log after ``since`` (``""``: from the
        start) up to its end, as ``huskies events`` prints them, read in bounded steps."""
        cursor = _str("since", since)
        while True:
            with _errors():
                page = self._native.events_after(cursor)
            for line in page.events:
                yield _envelope(line.envelope, line.cursor)
            if page.ops_read == 0:
                return
            cursor = page.end

    # -- lifetime

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return bool(self._native.is_closed())

    def close(self) -> None:
        """Ends its subscriptions and releases the node (and the home's lock)."""
        self._native.close()
        for sub in list(self._subs):
            sub.cancel()

    def __enter__(self) -> "Node":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<huskies.Node closed>"
        return f"<huskies.Node {self.id[:8]} {self.route}>"


class Daemon:
    """The sync daemon in this process (its own runtime): a full node that other daemons
    and the CLI can sync with. ``stop()`` (or leaving ``with``) shuts it down."""

    def __init__(self, native: Any) -> None:
        self._native = native
        self._node = Node(native.node())
        _open_handles.add(self)

    @classmethod
    def start(
        cls,
        path: Union[str, "os.PathLike[str]"],
        listen: str = "127.0.0.1:3001",
        peers: Iterable[str] = (),
    ) -> "Daemon":
        """Opens the home at ``path`` and serves ``/crdt-sync`` on ``listen`` (port 0 picks
        one), keeping ``peers`` (``ws://host:port/crdt-sync``) connected."""
        p = _path(path)
        lst = _str("listen", listen)
        if isinstance(peers, str):
            raise TypeError("peers must be a list of URLs, not a str")
        ps = [_str("peer", x) for x in peers]
        with _errors():
            return cls(_n.NativeDaemon.start(p, lst, ps))

    @property
    def address(self) -> str:
        """The ``host:port`` actually bound."""
        return str(self._native.address())

    @property
    def url(self) -> str:
        """``ws://<address>/crdt-sync``, for other daemons' ``peers``."""
        return str(self._native.url())

    @property
    def node(self) -> Node:
        """A handle whose calls run on the daemon's node."""
        return self._node

    def ticket(self, ttl_secs: int = 600) -> str:
        """A one-time join ticket for another node (``Node.join(path, ticket)``)."""
        return self._node.ticket(ttl_secs)

    @property
    def stopped(self) -> bool:
        """True after ``stop()``."""
        return bool(self._native.is_stopped())

    def stop(self) -> None:
        """Tells peers, closes connections, flushes and releases the home."""
        for sub in list(self._node._subs):
            sub.cancel()
        with _errors():
            self._native.stop()

    close = stop

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<huskies.Daemon {'stopped' if self.stopped else self.address}>"


@atexit.register
def _close_all() -> None:
    # Delivery threads must not call into an interpreter that is going away.
    for handle in list(_open_handles):
        try:
            handle.close()
        except BaseException:  # noqa: BLE001
            pass

