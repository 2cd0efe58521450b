"""The ``fleet_lock`` strategy against a real ``zincati-py fleetlock serve`` over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from zincati_py.fleetlock.client import FleetLockAdminClient, FleetLockClient, FleetLockError
from zincati_py.strategy.fleet_lock import FleetLock

OTHER = "fedcba9876543210fedcba9876543210"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def fleet_lock(node: Any, url: str, *, wait: float = 0, **kwargs: Any) -> FleetLock:
    """The strategy; ``wait``: its long-poll time (0 here: most tests want answers at once)."""
    node.fleet_lock(url, **kwargs)
    strategy = node.build()
    assert isinstance(strategy, FleetLock)
    strategy.lock_wait_secs = wait  # type: ignore[misc]
    return strategy


def token_file(tmp_path: Path, token: str) -> Path:
    """The node's token in a file only its owner reads (as the agent requires)."""
    path = tmp_path / "fleetlock.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


async def holders(server: Any, group: str = "default", token: str | None = None) -> list[str]:
    admin = FleetLockAdminClient(server.url, token=token)
    try:
        doc = await admin.group(group)
    finally:
        await admin.close()
    return [h["id"] for h in doc["holders"]]


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return await check()


def delay(verdict_recheck: datetime | None) -> float:
    assert verdict_recheck is not None
    return (verdict_recheck - NOW).total_seconds()


def test_grant_then_release_on_abort(node: Any, lock_server: Callable[[str], Any]) -> None:
    server = lock_server("")

    async def scenario() -> None:
        s = fleet_lock(node, server.url)
        await s.start()
        try:
            verdict = await s.can_finalize(NOW)
            assert verdict.allowed, verdict.reason
            assert verdict.recheck_at is None
            assert s.status()["holds_slot"] is True
            assert s.status()["base_url"] == server.url + "/"
            assert await holders(server) == [node.node_id]
            again = await s.can_finalize(NOW)  # idempotent while holding
            assert again.allowed
            assert await holders(server) == [node.node_id]
            await s.abort()
            assert s.status()["holds_slot"] is False
            assert await holders(server) == []
        finally:
            await s.stop()

    asyncio.run(scenario())


def test_group_full_backs_off_then_granted(node: Any, lock_server: Callable[[str], Any]) -> None:
    server = lock_server("[groups]\ndefault = 1\n")

    async def scenario() -> None:
        other = FleetLockClient(server.url, OTHER, "default")
        s = fleet_lock(node, server.url, cap_secs=8)
        try:
            await other.pre_reboot()
            delays = []
            for _ in range(4):
                verdict = await s.can_finalize(NOW)
                assert not verdict.allowed
                assert "group 'default' is full" in verdict.reason
                delays.append(delay(verdict.recheck_at))
            # initial 5 s, doubling, capped at steady_interval_secs = 8, jittered to [d/2, d].
            assert 2.5 <= delays[0] <= 5
            assert all(4 <= d <= 8 for d in delays[1:])
            status = s.status()
            assert status["allowed"] is False and status["holds_slot"] is False
            assert "group_full (HTTP 409)" in status["last_error"]
            assert server.requests("pre-reboot") == 5

            await other.steady_state()
            granted = await s.can_finalize(NOW)
            assert granted.allowed and await holders(server) == [node.node_id]
        finally:
            await other.close()
            await s.stop()

    asyncio.run(scenario())


def test_error_body_reported(node: Any, lock_server: Callable[[str], Any]) -> None:
    server = lock_server('unknown_groups = "reject"\n[groups]\nknown = 1\n')

    async def scenario() -> None:
        s = fleet_lock(node, server.url, group="stranger")
        try:
            verdict = await s.can_finalize(NOW)
            assert not verdict.allowed
            assert verdict.reason.startswith("pre-reboot failed: unknown_group (HTTP 404): ")
            assert "stranger" in verdict.reason
            assert 2.5 <= delay(verdict.recheck_at) <= 5
        finally:
            await s.stop()

    asyncio.run(scenario())


def test_unreachable_then_recovers(node: Any, lock_server: Callable[[str], Any]) -> None:
    server = lock_server("")

    async def scenario() -> None:
        s = fleet_lock(node, server.url, cap_secs=8)
        try:
            server.stop()
            first = await s.can_finalize(NOW)
            second = await s.can_finalize(NOW)
            assert not first.allowed and not second.allowed
            assert "transport (no answer)" in first.reason
            assert 2.5 <= delay(first.recheck_at) <= 5 and 4 <= delay(second.recheck_at) <= 8
            steady = await s.report_steady()
            assert not steady.allowed and steady.recheck_at is not None
            assert "steady-state failed" in steady.reason

            server.start()
            assert (await s.can_finalize(NOW)).allowed
            # A success resets the backoff: the next failure starts small again.
            server.stop()
            after = await s.can_finalize(NOW)
            assert 2.5 <= delay(after.recheck_at) <= 5
            server.start()
            steady = await s.report_steady()
            assert steady.allowed, steady.reason
            assert await holders(server) == []
            assert s.status()["steady_state"] == steady.reason
        finally:
            await s.stop()

    asyncio.run(scenario())


def test_lease_is_renewed_while_held(node: Any, lock_server: Callable[[str], Any]) -> None:
    server = lock_server("[groups]\ndefault = { slots = 1, lease_seconds = 3 }\n")

    async def scenario() -> None:
        s = fleet_lock(node, server.url)
        other = FleetLockClient(server.url, OTHER, "default")
        try:
            verdict = await s.can_finalize(NOW)
            assert verdict.allowed and "lease 3s" in verdict.reason
            assert s.status()["lease_seconds"] == 3
            # Without renewal the lease would lapse at 3 s and the other node would get in.
            await asyncio.sleep(4.5)
            assert s.status()["renewals"] >= 1
            try:
                await other.pre_reboot()
                raise AssertionError("the other node got the slot: the lease was not renewed")
            except FleetLockError as exc:
                assert exc.status == 409
            assert await holders(server) == [node.node_id]
            assert node.wakes == []
            await s.abort()
            assert await holders(server) == []
            await other.pre_reboot()  # the released slot is free for others at once
        finally:
            await other.close()
            await s.stop()

    asyncio.run(scenario())


def test_lost_lease_wakes_agent(node: Any, lock_server: Callable[[str], Any]) -> None:
    server = lock_server("[groups]\ndefault = { slots = 1, lease_seconds = 2 }\n")

    async def scenario() -> None:
        s = fleet_lock(node, server.url)
        other = FleetLockClient(server.url, OTHER, "default")
        admin = FleetLockAdminClient(server.url)
        try:
            assert (await s.can_finalize(NOW)).allowed
            assert await admin.release("default", node.node_id)  # an admin takes the slot away
            await other.pre_reboot()

            async def woken() -> bool:
                return bool(node.wakes)

            assert await wait_for(woken, timeout=5)
            assert node.wakes == ["fleet_lock slot lost at lease renewal"]
            assert s.status()["holds_slot"] is False
            verdict = await s.can_finalize(NOW)
            assert not verdict.allowed and "full" in verdict.reason
        finally:
            await admin.close()
            await other.close()
            await s.stop()

    asyncio.run(scenario())


def test_no_lease_no_renewal(node: Any, lock_server: Callable[[str], Any]) -> None:
    server = lock_server("lease_seconds = 0\n")

    async def scenario() -> None:
        s = fleet_lock(node, server.url)
        try:
            assert (await s.can_finalize(NOW)).allowed
            assert s.status()["lease_seconds"] is None
            assert s._renewal is None
        finally:
            await s.stop()

    asyncio.run(scenario())


def test_abort_retries_release_in_background(node: Any, lock_server: Callable[[str], Any]) -> None:
    server = lock_server("")

    async def scenario() -> None:
        s = fleet_lock(node, server.url, cap_secs=2)
        try:
            assert (await s.can_finalize(NOW)).allowed
            server.stop()
            await s.abort()  # returns at once; the release is retried later
            assert s.status()["release_pending"] is True
            assert s.status()["holds_slot"] is True
            server.start()

            async def released() -> bool:
                return not s.status()["release_pending"]

            assert await wait_for(released, timeout=10)
            assert s.status()["holds_slot"] is False
            assert await holders(server) == []
        finally:
            await s.stop()

    asyncio.run(scenario())


def test_base_url_is_a_directory(node: Any, lock_server: Callable[[str], Any]) -> None:
    server = lock_server(prefix="/fleet/lock")

    async def scenario() -> None:
        s = fleet_lock(node, server.url + "/fleet/lock")  # no trailing slash
        try:
            assert (await s.can_finalize(NOW)).allowed
            assert s.status()["base_url"] == server.url + "/fleet/lock/"
        finally:
            await s.stop()

    asyncio.run(scenario())


def test_unconfigured_node_id(node: Any) -> None:
    # No node_uuid and no machine-id: config reports it; the strategy says why it can't ask.
    node.write(
        '[updates]\nstrategy = "fleet_lock"\n[updates.fleet_lock]\nbase_url = "http://127.0.0.1:9/"\n'
    )
    from zincati_py.config import load
    from zincati_py.strategy import StrategyContext, build

    result = load(node.root)
    s = build(StrategyContext(result.config, result.paths, node.wakes.append))
    verdict = asyncio.run(s.can_finalize(NOW))
    assert not verdict.allowed and "no node id" in verdict.reason
    assert asyncio.run(s.report_steady()).allowed is False


def test_recheck_is_never_in_the_past(node: Any, lock_server: Callable[[str], Any]) -> None:
    server = lock_server("")
    server.stop()

    async def scenario() -> None:
        s = fleet_lock(node, server.url)
        try:
            for _ in range(3):
                verdict = await s.can_finalize(NOW)
                assert verdict.recheck_at is not None and verdict.recheck_at > NOW
                assert verdict.recheck_at - NOW <= timedelta(seconds=8)
        finally:
            await s.stop()

    asyncio.run(scenario())


def test_per_node_tokens_from_file_and_credential(
    node: Any, lock_server: Callable[..., Any], tmp_path: Any, monkeypatch: Any
) -> None:
    """Issue 11 item 3: a server with per-node tokens answered 401 to every zincati-py node.
    The node's token from a file, then from a systemd credential; another node's token is
    403 (a node cannot act for another id); no readable token is reported, never a grant."""
    server = lock_server(
        f'[groups]\ndefault = 2\n[auth]\nadmin_token = "adm"\n[auth.nodes]\n'
        f'"{node.node_id}" = "mine"\n"{OTHER}" = "theirs"\n'
    )
    token = token_file(tmp_path, "mine")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "fleetlock").write_text("theirs\n")

    async def scenario(strategy: FleetLock) -> None:
        try:
            return await check(strategy)
        finally:
            await strategy.stop()

    async def check(s: FleetLock) -> None:
        verdict = await s.can_finalize(NOW)
        expect = s._expect  # type: ignore[attr-defined]
        if expect == 200:
            assert verdict.allowed, verdict.reason
            assert await holders(server, token="adm") == [node.node_id]
            await s.abort()
            assert await holders(server, token="adm") == []
        else:
            assert not verdict.allowed
            assert f"({expect_status(expect)})" in verdict.reason, verdict.reason
            assert await holders(server, token="adm") == []

    def expect_status(code: int | str) -> str:
        return {401: "HTTP 401", 403: "HTTP 403", "token": "no answer"}[code]

    for extra, expect in [
        (f'token_file = "{token}"\n', 200),
        ('token_credential = "fleetlock"\n', 403),  # the credential holds OTHER's token
        ("", 401),
        (f'token_file = "{tmp_path / "missing"}"\n', "token"),
    ]:
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        node.fleet_lock(server.url)
        node.write(f"[updates.fleet_lock]\n{extra}", "60-token.toml")
        s = fleet_lock(node, server.url)
        assert s.status()["token"] == (
            "file" if "token_file" in extra else "credential" if extra else None
        )
        s._expect = expect  # type: ignore[attr-defined]
        asyncio.run(scenario(s))
    # The credential with this node's token: granted.
    (creds / "fleetlock").write_text("mine\n")
    node.write('[updates.fleet_lock]\ntoken_credential = "fleetlock"\n', "60-token.toml")
    s = fleet_lock(node, server.url)
    s._expect = 200  # type: ignore[attr-defined]
    asyncio.run(scenario(s))


def test_token_settings_are_validated(node: Any) -> None:
    from zincati_py.config import load

    node.fleet_lock("http://127.0.0.1:1/")
    for text, key in [
        ('token_file = "relative.token"\n', "updates.fleet_lock.token_file"),
        ('token_credential = "a/b"\n', "updates.fleet_lock.token_credential"),
        ('token_file = "/t"\ntoken_credential = "c"\n', "updates.fleet_lock.token_credential"),
        ("token = 5\n", "updates.fleet_lock.token"),
    ]:
        node.write(f"[updates.fleet_lock]\n{text}", "60-token.toml")
        result = load(node.root)
        problems = [(p.severity, p.key) for p in result.problems]
        assert ("error", key) in problems or key == "updates.fleet_lock.token", problems
        assert any(k == key for _, k in problems), problems


def test_waits_in_the_queue_and_is_granted_when_freed(
    node: Any, lock_server: Callable[[str], Any]
) -> None:
    """Issue 15: the strategy says it can wait; the server answers when the slot frees,
    within the same request (one pre-reboot, no backoff)."""
    server = lock_server("[groups]\ndefault = 1\n")

    async def scenario() -> None:
        other = FleetLockClient(server.url, OTHER, "default")
        s = fleet_lock(node, server.url, wait=20)
        try:
            await other.pre_reboot()
            asked = server.requests("pre-reboot")
            waiting = asyncio.create_task(s.can_finalize(NOW))
            await asyncio.sleep(1.0)
            assert not waiting.done()
            released_at = time.monotonic()
            await other.steady_state()
            verdict = await asyncio.wait_for(waiting, 10)
            assert verdict.allowed, verdict.reason
            assert time.monotonic() - released_at < 2
            assert server.requests("pre-reboot") == asked + 1
            assert await holders(server) == [node.node_id]
        finally:
            await other.close()
            await s.stop()

    asyncio.run(scenario())


def test_release_before_any_ask_is_made_by_a_child(
    node: Any, lock_server: Callable[..., Any], tmp_path: Any
) -> None:
    """Issue 17: an agent in a steady state never loads the HTTP stack. Until the strategy's
    first pre-reboot, a release (the steady-state report at start) is made by a child process:
    the slot this node held (say, before a crash) is released, the child's error keeps its
    status, and the token reaches it (stdin)."""
    server = lock_server(
        f'[groups]\ndefault = 1\n[auth]\nadmin_token = "adm"\n'
        f'[auth.nodes]\n"{node.node_id}" = "mine"\n'
    )
    token = token_file(tmp_path, "mine")

    async def scenario() -> None:
        before = FleetLockClient(server.url, node.node_id, "default", token="mine")
        try:
            await before.pre_reboot()
        finally:
            await before.close()
        assert await holders(server, token="adm") == [node.node_id]
        node.write(
            f'[updates.fleet_lock]\ntoken_file = "{tmp_path / "missing"}"\n', "60-token.toml"
        )
        s = fleet_lock(node, server.url)
        steady = await s.report_steady()
        assert not steady.allowed and "cannot read the FleetLock token" in steady.reason
        node.write("", "60-token.toml")  # no token: the child's 401 comes back as such
        s = fleet_lock(node, server.url)
        steady = await s.report_steady()
        assert not steady.allowed and "(HTTP 401)" in steady.reason, steady.reason
        assert await holders(server, token="adm") == [node.node_id]
        node.write(f'[updates.fleet_lock]\ntoken_file = "{token}"\n', "60-token.toml")
        s = fleet_lock(node, server.url)
        steady = await s.report_steady()
        assert steady.allowed, steady.reason
        assert s._client is None  # no HTTP client in this process
        assert await holders(server, token="adm") == []
        # A pre-reboot makes the client; a later release uses it.
        assert (await s.can_finalize(NOW)).allowed
        await s.abort()
        assert s._client is not None
        assert await holders(server, token="adm") == []
        await s.stop()

    asyncio.run(scenario())


CHILD_ONLY = """
import asyncio, sys
from zincati_py.fleetlock.client import FleetLockError
from zincati_py.fleetlock.oneshot import steady_state_once

async def main():
    released = await steady_state_once(sys.argv[1], sys.argv[2], "default")
    try:
        await steady_state_once(sys.argv[1], sys.argv[2], "no such group")
    except FleetLockError as exc:
        error = (exc.kind, exc.status)
    return released, error

released, error = asyncio.run(main())
loaded = sorted(m for m in ("httpx", "httpcore", "anyio", "h11", "idna") if m in sys.modules)
print(released, error, loaded)
"""


def test_release_by_a_child_loads_no_http_stack(node: Any, lock_server: Callable[..., Any]) -> None:
    server = lock_server("")

    async def take() -> None:
        client = FleetLockClient(server.url, node.node_id, "default")
        try:
            await client.pre_reboot()
        finally:
            await client.close()

    asyncio.run(take())
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_ONLY, server.url, node.node_id],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "('invalid_body',", "400)", "[]"], proc.stdout
    assert asyncio.run(holders(server)) == []


def test_cancelled_release_kills_its_child(node: Any) -> None:
    """A server that never answers: cancelling the report (the agent stopping) ends the child."""

    def children() -> set[int]:
        return {
            int(pid)
            for task in Path("/proc/self/task").iterdir()
            for pid in (task / "children").read_text().split()
        }

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"

        async def scenario() -> int:
            before = children()
            s = fleet_lock(node, url)
            task = asyncio.create_task(s.report_steady())
            deadline = time.monotonic() + 10
            while not (children() - before) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            (child,) = children() - before
            await asyncio.sleep(0.5)  # the child is waiting for the answer
            assert not task.done()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert task.cancelled()
            return child

        child = asyncio.run(scenario())
        assert not Path(f"/proc/{child}").exists()
