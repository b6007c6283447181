"""Misuse never crashes the interpreter: Ctrl-C during long calls, exit with live handles."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import time

import huskies

LONG_RUNNER = """
import signal, sys, huskies
# A process started in the background of a shell without job control inherits SIGINT
# ignored, and Python then installs no handler of its own: restore Python's default so the
# test is about the bindings, not about how the test run was started.
signal.signal(signal.SIGINT, signal.default_int_handler)
node = huskies.Node.init(sys.argv[1])
sub = node.subscribe(lambda e: None)
print("ready", flush=True)
i = 0
while True:
    with node.batch():
        for _ in range(512):
            node.add_story(f"{i}_x")
            i += 1
    node.stories()
"""


def test_ctrl_c_during_long_calls_raises_keyboard_interrupt(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "long.py"
    script.write_text(LONG_RUNNER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "home")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # Python's own exit on an unhandled KeyboardInterrupt (it re-raises SIGINT, so -2):
    # no segfault, no abort, no hang.
    assert proc.returncode in (1, -signal.SIGINT), (proc.returncode, err)
    assert "KeyboardInterrupt" in err
    # What was committed is intact.
    with huskies.Node.open(tmp_path / "home") as node:
        assert node.verify().ok
        assert len(node.stories()) % 512 == 0


EXIT_WITH_LIVE_HANDLES = """
import sys, huskies
node = huskies.Node.init(sys.argv[1] + "/n")
node.subscribe(lambda e: None)
node.add_story("1_a")
huskies.Node.init(sys.argv[1] + "/d").close()
d = huskies.Daemon.start(sys.argv[1] + "/d", listen="127.0.0.1:0")
d.node.subscribe(lambda e: None)
d.node.add_story("1_a")
d.node.event("1_a", "deps-met")
print("leaving", flush=True)
"""


def test_exit_with_live_nodes_daemons_and_subscriptions(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "exit.py"
    script.write_text(EXIT_WITH_LIVE_HANDLES)
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "leaving"
    # Both homes were released at exit.
    for home in ("n", "d"):
        with huskies.Node.open(tmp_path / home) as node:
            assert node.story("1_a").name == "1_a"
