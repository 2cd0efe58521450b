"""The agent's building blocks over their real protocols: sd_notify datagrams, the persisted
record on disk, the metrics socket and HTTP listener, ``zincati-py status``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from testbed.proc import zincati_py_argv
from zincati_py.agent import persist, status
from zincati_py.agent.notify import Notifier
from zincati_py.metrics import AgentMetrics, Exporter

ZPY = tuple(zincati_py_argv())


def _datagram_socket(path: str | bytes) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(2)
    return s


def test_notify_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with _datagram_socket(path) as s:
        n = Notifier({"NOTIFY_SOCKET": path})
        assert n.ready("initialized")
        assert s.recv(4096) == b"READY=1\nSTATUS=initialized"
        assert n.status("two\nlines")
        assert s.recv(4096) == b"STATUS=two lines"
        assert n.stopping()
        assert s.recv(4096) == b"STOPPING=1"
        n.close()


def test_notify_abstract_socket() -> None:
    name = f"zpy-test-{os.getpid()}"
    with _datagram_socket(b"\0" + name.encode()) as s:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.watchdog()
        assert s.recv(4096) == b"WATCHDOG=1"
        n.close()


def test_notify_disabled_and_watchdog_env() -> None:
    assert not Notifier({}).send(READY="1")
    pid = str(os.getpid())
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": pid}).watchdog_usec == 2_000_000
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_usec is None
    assert Notifier({"WATCHDOG_USEC": "junk"}).watchdog_usec is None


def test_persist_roundtrip_and_atomic(tmp_path: Path) -> None:
    store = persist.Store(tmp_path)
    req = persist.RebootRequest("b" * 64, "40.2", "a" * 64, 123.0, "boot", called=False)
    store.update(reboot_requested=req, failed=("c" * 64,))
    again = persist.Store(tmp_path)
    assert again.record.reboot_requested == req
    assert again.record.failed == ("c" * 64,)
    assert oct((tmp_path / "state.json").stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp files left


_OPENS: list[tuple[str, int]] = []  # (path, thread id) of every os.open, for the audit hook


def _record_open(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and isinstance(args[0], str):
        _OPENS.append((args[0], threading.get_ident()))


sys.addaudithook(_record_open)  # process-wide and permanent: it only appends to a list


def test_persist_commit_writes_off_the_event_loop_before_returning(tmp_path: Path) -> None:
    """The durable write (its temp file, fsync and rename) runs in a worker thread, while the
    loop goes on; awaiting the commit returns only once a fresh load sees it."""
    state_dir = tmp_path / "state"
    req = persist.RebootRequest("b" * 64, "40.2", "a" * 64, 123.0, "boot")

    async def body() -> tuple[int, list[str]]:
        store = persist.Store(state_dir)
        loop_thread = threading.get_ident()
        ran: list[str] = []
        asyncio.get_running_loop().call_soon(ran.append, "loop ran")
        saved = store.commit(reboot_requested=req)
        assert store.record.reboot_requested == req  # decided at once, in order
        state = await saved
        ran.append("committed")
        assert state.reboot_requested == req
        assert persist.Store(state_dir).record.reboot_requested == req
        return loop_thread, ran

    _OPENS.clear()
    loop_thread, ran = asyncio.run(body())
    writers = {tid for path, tid in _OPENS if path.startswith(str(state_dir) + "/.state.json.")}
    assert writers and loop_thread not in writers, (loop_thread, _OPENS)
    assert ran == ["loop ran", "committed"]


def test_persist_commits_apply_in_order_and_a_failed_write_is_not_in_force(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"

    async def body() -> None:
        store = persist.Store(state_dir)
        # Two decisions before either write finished: the second builds on the first and the
        # file ends with both.
        first = store.commit(last_check=1.0)
        second = store.commit(last_check_result="no new update")
        await asyncio.gather(first, second)
        on_disk = persist.Store(state_dir).record
        assert (on_disk.last_check, on_disk.last_check_result) == (1.0, "no new update")
        # The state directory replaced by a file: the write fails, the change is not in force
        # (the caller must not act on it), and the next one is saved once writing works again.
        state_dir.rename(tmp_path / "moved")
        state_dir.write_text("not a directory")
        post = persist.Postponement("c" * 64, 5.0)
        with pytest.raises(persist.StateWriteError):
            await store.commit(postponed=post)
        assert store.record.postponed is None and store.record.last_check == 1.0
        state_dir.unlink()
        (tmp_path / "moved").rename(state_dir)
        await store.commit(last_check=2.0)
        assert persist.Store(state_dir).record == store.record
        assert store.record.postponed is None and store.record.last_check == 2.0

    asyncio.run(body())


def test_sweep_removes_only_leftovers_of_interrupted_writes(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("{}")
    leftovers = [tmp_path / ".state.json.abcd1234.tmp", tmp_path / ".state.json.x.tmp"]
    for p in leftovers:
        p.write_text("{")
    keep = [tmp_path / ".status.json.abcd1234.tmp", tmp_path / "state.json.corrupt-1"]
    for p in keep:
        p.write_text("x")
    (tmp_path / ".state.json.link.tmp").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_text("not touched")
    removed = persist.sweep_temp_files(state)
    assert sorted(removed) == sorted([*leftovers, tmp_path / ".state.json.link.tmp"])
    assert all(p.exists() for p in keep) and state.exists()
    assert (tmp_path / "elsewhere").read_text() == "not touched"  # a link is removed, not followed
    assert persist.sweep_temp_files(tmp_path / "missing" / "state.json") == []


def test_persist_corrupt_file_is_kept_aside(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    store = persist.Store(tmp_path)
    assert store.record == persist.Record()
    assert any(p.name.startswith("state.json.corrupt-") for p in tmp_path.iterdir())


def test_metrics_names_and_socket(tmp_path: Path) -> None:
    m = AgentMetrics()
    m.updates_enabled = 1
    m.finalization_attempts = 3
    m.blocked("active_usersessions")
    m.state = "update staged"
    sock = tmp_path / "public" / "metrics.promsock"

    async def scrape() -> tuple[bytes, bytes]:
        exporter = Exporter(m, sock, "127.0.0.1:0")
        await exporter.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(sock))
            raw = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            port = exporter._servers[1].sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            http = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return raw, http
        finally:
            await exporter.stop()

    raw, http = asyncio.run(scrape())
    text = raw.decode()
    assert "zincati_update_agent_updates_enabled 1.0" in text
    # Zincati's exact counter name, without the _total prometheus-client would add.
    assert "\nzincati_update_agent_finalization_attempts 3.0" in text
    assert (
        'zincati_update_agent_finalization_blocked_count{reason="active_usersessions"} 1.0' in text
    )
    assert 'zincati_py_state{state="update staged"} 1.0' in text
    assert "zincati_rpm_ostree_deploy_attempts_total 0.0" in text
    assert http.startswith(b"HTTP/1.1 200 OK\r\n")
    assert http.endswith(raw)
    assert not sock.exists()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ZPY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_cli(tmp_path: Path) -> None:
    root = tmp_path / "root"
    missing = _cli("status", "--root", str(root))
    assert missing.returncode == 69, missing.stderr
    assert "no agent status" in missing.stderr
    doc = {
        "schema": status.SCHEMA,
        "pid": os.getpid(),
        "state": "update staged",
        "state_since": "2026-01-01T00:00:00+00:00",
        "reason": "strategy periodic: outside maintenance windows",
        "next": "reboot into the update when allowed",
        "recheck_at": "2026-01-02T03:00:00+00:00",
        "booted": {"checksum": "a" * 64, "version": "40.1"},
        "staged": {"checksum": "b" * 64, "version": "40.2"},
        "updates_enabled": True,
        "config": {
            "valid": False,
            "in_force": "last good configuration",
            "problems": ["p: k: bad"],
        },
    }
    status.write(root / "run/zincati-py/status.json", doc)
    human = _cli("status", "--root", str(root))
    assert human.returncode == 0, human.stderr
    for text in (
        "update staged",
        "outside maintenance windows",
        "40.2 (bbbbbbbbbbbb)",
        "INVALID",
        "p: k: bad",
    ):
        assert text in human.stdout
    js = _cli("status", "--root", str(root), "--json")
    assert js.returncode == 0
    out = json.loads(js.stdout)
    assert out["state"] == "update staged" and out["agent_running"] is True


@pytest.mark.parametrize("args", [("check",), ("wake", "window"), ("reboot-now",)])
def test_dbus_commands_without_agent(tmp_path: Path, args: tuple[str, ...]) -> None:
    from testbed.bus import PrivateBus

    with PrivateBus("system", tmp_path / "bus") as bus:
        r = _cli(*args, "--system-bus", bus.address)
        assert r.returncode == 69, r.stderr
        assert "not reachable" in r.stderr
        if args == ("check",):
            timer = _cli("check", "--from-timer", "--system-bus", bus.address)
            assert timer.returncode == 0, timer.stderr


def test_polkit_check_against_dbusmock_polkitd(tmp_path: Path) -> None:
    """RebootNow's non-root path asks polkit (python-dbusmock's polkitd template)."""
    from testbed.bus import PrivateBus, dbus_daemon_available
    from testbed.logind import logind_double_available
    from zincati_py.agent.api import REBOOT_NOW_ACTION, polkit_allows

    if not dbus_daemon_available() or not logind_double_available():
        pytest.skip("needs dbus-daemon and python3-dbusmock")

    async def ask(address: str) -> tuple[bool, bool]:
        from dbus_fast import BusType, Message
        from dbus_fast.aio import MessageBus

        bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
        try:
            assert bus.unique_name is not None
            for _ in range(300):  # the mock takes a moment to own its name (bounded: 15 s)
                owner = await bus.call(
                    Message(
                        destination="org.freedesktop.DBus",
                        path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus",
                        member="NameHasOwner",
                        signature="s",
                        body=["org.freedesktop.PolicyKit1"],
                    )
                )
                if owner is not None and owner.body == [True]:
                    break
                await asyncio.sleep(0.05)
            denied = await polkit_allows(bus, bus.unique_name, REBOOT_NOW_ACTION, False)
            await bus.call(
                Message(
                    destination="org.freedesktop.PolicyKit1",
                    path="/org/freedesktop/PolicyKit1/Authority",
                    interface="org.freedesktop.DBus.Mock",
                    member="SetAllowed",
                    signature="as",
                    body=[[REBOOT_NOW_ACTION]],
                )
            )
            allowed = await polkit_allows(bus, bus.unique_name, REBOOT_NOW_ACTION, True)
            return denied, allowed
        finally:
            bus.disconnect()

    with PrivateBus("system", tmp_path / "bus") as bus:
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus.address}
        mock = subprocess.Popen(
            ["/usr/bin/python3", "-m", "dbusmock", "--system", "--template", "polkitd"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            denied, allowed = asyncio.run(ask(bus.address))
        finally:
            mock.terminate()
            mock.wait(10)
    assert (denied, allowed) == (False, True)


def test_polkit_unreachable_refuses(tmp_path: Path) -> None:
    from testbed.bus import PrivateBus
    from zincati_py.agent.api import REBOOT_NOW_ACTION, polkit_allows

    async def ask(address: str) -> bool:
        from dbus_fast import BusType
        from dbus_fast.aio import MessageBus

        bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
        try:
            assert bus.unique_name is not None
            return await polkit_allows(bus, bus.unique_name, REBOOT_NOW_ACTION, False)
        finally:
            bus.disconnect()

    with PrivateBus("system", tmp_path / "bus") as bus:
        assert asyncio.run(ask(bus.address)) is False


def test_job_metrics_load_at_the_first_scrape(tmp_path: Path) -> None:
    """The agent's [[schedule]] job metrics: their module is loaded by the first scrape, not
    at start (issue 17), and then rendered with the agent's own metrics."""
    code = (
        "import asyncio, sys\n"
        "from zincati_py.agent.publish import JobMetrics\n"
        "from zincati_py.metrics import AgentMetrics\n"
        "from zincati_py.paths import Paths\n"
        "m = AgentMetrics()\n"
        "jobs = JobMetrics(Paths.from_root(sys.argv[1]), lambda: ['backup'], lambda: None, None)\n"
        "m.register(jobs)\n"
        "m.on_scrape(jobs.refresh)\n"
        "assert 'zincati_py.schedule.metrics' not in sys.modules\n"
        "asyncio.run(m.refresh())\n"
        "text = m.render().decode()\n"
        "assert '# HELP zincati_py_schedule_runs ' in text, text\n"
        "assert 'zincati_update_agent_updates_enabled' in text, text\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_waits_interruptible_and_claims() -> None:
    """agent.core.Waits: a claim or an interrupt gives up the running wait (Interrupted, and
    the loop is told to ask again); a claim made before the wait starts refuses it; the
    evaluation's own cancellation (shutdown) stays a cancellation."""
    from zincati_py.agent.core import Interrupted, Waits

    async def scenario() -> None:
        lock = asyncio.Lock()
        again: list[str] = []
        waits = Waits(lock, again.append)
        cancelled: list[bool] = []

        async def slot(seconds: float) -> str:
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            return "granted"

        async def evaluation(seconds: float, came: str | None = None) -> str:
            async with lock:
                try:
                    return await waits.interruptible(slot(seconds), came)
                except Interrupted as exc:
                    return f"interrupted: {exc}"

        assert await evaluation(0) == "granted" and again == []
        # A claim while the evaluation waits: given up at once, then the claimer has the lock.
        running = asyncio.get_running_loop().create_task(evaluation(30))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        async with waits.claim("RebootNow"):
            assert time.monotonic() - t0 < 1
            assert running.done() and running.result() == "interrupted: RebootNow"
        assert cancelled == [True] and again == ["RebootNow"]
        # Work that came before the wait started: it does not start.
        assert await evaluation(30, came="wake: window") == "interrupted: wake: window"
        assert again == ["RebootNow", "wake: window"] and cancelled == [True]
        # A claim waiting for the lock before the wait starts refuses it too.
        await lock.acquire()  # an evaluation, not waiting yet
        claim = waits.claim("reload")
        claimer = asyncio.get_running_loop().create_task(claim.__aenter__())
        await asyncio.sleep(0)  # the claim waits for the lock
        try:
            await waits.interruptible(slot(30), None)
        except Interrupted as exc:
            assert str(exc) == "reload"
        else:
            raise AssertionError("the wait started while a claim was pending")
        assert again[-1] == "reload"
        lock.release()
        await claimer
        assert lock.locked()
        await claim.__aexit__(None, None, None)
        assert not lock.locked()
        # Interrupting when nothing waits does nothing.
        assert waits.interrupt("timer") is False
        # The evaluation itself cancelled (shutdown): a cancellation, not an interruption.
        running = asyncio.get_running_loop().create_task(evaluation(30))
        await asyncio.sleep(0.05)
        running.cancel()
        try:
            await running
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError(running.result())

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_the_agent_command_builds_only_its_own_parser() -> None:
    """``zincati-py [-v] agent`` imports no other command's module (they would stay resident
    in the daemon); any other command line builds them all."""
    code = (
        "import sys\n"
        "from zincati_py.cli import COMMAND_MODULES, build_parser\n"
        "def cmds():\n"
        "    return {m for m in sys.modules if m.startswith('zincati_py.cli.') and '_cmd' in m}\n"
        "p = build_parser(['-v', 'agent', '--root', '/'])\n"
        "assert cmds() == {'zincati_py.cli.agent_cmd'}, cmds()\n"
        "assert p.parse_args(['-v', 'agent']).func.__name__ == 'cmd_agent'\n"
        "build_parser(['status'])\n"
        "assert cmds() == {f'zincati_py.cli.{m}' for m in COMMAND_MODULES}, cmds()\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
