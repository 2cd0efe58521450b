"""``zincati-py demo`` as a user runs it: the whole rollout, its JSON contract, Ctrl-C."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from testbed.demo import NEW_VERSION, OLD_VERSION
from testbed.proc import zincati_py_argv
from tests.e2e.conftest import strays


def _readline(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout}s"
    return proc.stdout.readline()


def _events(stdout: str) -> list[dict[str, Any]]:
    # --json: every stdout line is one JSON object, nothing else.
    return [json.loads(line) for line in stdout.splitlines()]


def test_demo_fast_json_updates_every_node_once_one_at_a_time() -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [*zincati_py_argv(), "demo", "--fast", "--json"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    elapsed = time.monotonic() - started
    events = _events(proc.stdout)
    summary = events[-1]
    assert proc.returncode == 0, f"{proc.stderr}\n{proc.stdout}"
    assert summary["event"] == "summary" and summary["ok"] is True, summary
    assert elapsed < 60, f"--fast took {elapsed:.0f}s"
    nodes = summary["nodes"]
    assert [n["node"] for n in nodes] == ["node1", "node2", "node3"]
    for n in nodes:
        assert (n["from"], n["to"]) == (OLD_VERSION, NEW_VERSION)
        assert n["reboots"] == 1 and n["reboot_calls"] == 1
        assert n["waited_s"] > 0
    assert summary["max_concurrent_holders"] == 1

    def of(kind: str) -> list[dict[str, Any]]:
        return [e for e in events if e["event"] == kind]

    # Timers as systemd lists them, and both kinds firing on every node.
    for node in ("node1", "node2", "node3"):
        listed = next(e for e in of("timers") if e["node"] == node)
        assert listed["timers"] == ["zincati-py-check.timer", "zincati-py-window-1.timer"]
        details = {d["unit"]: d for d in listed["details"]}
        window_start = next(e for e in of("node_up") if e["node"] == node)["window_start"]
        # The generated window timer fires exactly when the configured cron window opens.
        assert details["zincati-py-window-1.timer"]["next"] == window_start
        assert details["zincati-py-check.timer"]["activates"] == "zincati-py-check.service"
        fired = {e["unit"] for e in of("timer_fired") if e["node"] == node}
        assert fired == {"zincati-py-check.timer", "zincati-py-window-1.timer"}
    staged = of("staged")
    assert len(staged) == 3 and all(e["finalization_locked"] for e in staged)
    assert len(of("finalization_unlocked")) == 3
    # One at a time: slot taken, reboot, steady, released; the next node only after that.
    story = [
        (e["event"], e["node"])
        for e in events
        if e["event"] in ("reboot_call", "rebooted", "steady") and e["node"]
    ]
    assert len(story) == 9
    for i in range(0, 9, 3):
        node = story[i][1]
        assert story[i : i + 3] == [("reboot_call", node), ("rebooted", node), ("steady", node)]
    assert len({story[i][1] for i in range(0, 9, 3)}) == 3
    taken = [e["node"] for e in of("slot_taken")]
    assert taken == [story[i][1] for i in range(0, 9, 3)]
    assert all(e["holders"] == 1 for e in of("slot_taken"))
    # Nodes waited for the window: nobody rebooted before the window timer fired.
    window = min(e["t"] for e in of("timer_fired") if e["unit"] == "zincati-py-window-1.timer")
    first_reboot = min(e["t"] for e in of("reboot_call"))
    assert first_reboot > window - 1.0  # the agent's own recheck may beat the timer by ms
    assert of("teardown") and not strays(of("start")[0]["workdir"])
    assert not Path(of("start")[0]["workdir"]).exists()


def test_demo_ctrl_c_tears_everything_down() -> None:
    proc = subprocess.Popen(
        [*zincati_py_argv(), "demo", "--fast", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        # Interrupt once every node has staged the update (agents busy, timers running).
        deadline = time.monotonic() + 60
        while sum('"event": "staged"' in line for line in lines) < 3:
            assert time.monotonic() < deadline, "\n".join(lines)
            ready, _, _ = select.select([proc.stdout], [], [], 5)
            if ready:
                line = proc.stdout.readline()
                assert line, f"demo ended early: {proc.stderr.read() if proc.stderr else ''}"
                lines.append(line)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = _events("".join(lines) + out)
    assert proc.returncode == 130, err
    summary = events[-1]
    assert summary["event"] == "summary" and summary["ok"] is False
    assert summary["reason"] == "interrupted by SIGINT"
    assert len(summary["pending"]) == 3
    workdir = events[0]["workdir"]
    assert not strays(workdir)
    assert not os.path.exists(workdir)


def test_demo_rejects_a_bad_node_count_before_starting_anything() -> None:
    proc = subprocess.run(
        [*zincati_py_argv(), "demo", "--nodes", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == os.EX_USAGE
    assert proc.stdout == ""
    assert proc.stderr == "zincati-py: --nodes: must be between 1 and 20, got 0\n"


def test_terminal_ctrl_c_during_start_up_leaves_nothing_running() -> None:
    # A terminal sends SIGINT to the whole foreground process group, children included.
    proc = subprocess.Popen(
        [*zincati_py_argv(), "demo", "--fast", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    try:
        first = json.loads(_readline(proc, 30))
        server = json.loads(_readline(proc, 30))  # nodes are starting now
        assert (first["event"], server["event"]) == ("start", "lock_server")
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err == ""
    assert _events(out)[-1]["reason"] == "interrupted by SIGINT"
    assert not strays(first["workdir"])
    assert not os.path.exists(first["workdir"])
