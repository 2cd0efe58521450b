"""Zincati's ``marker_file`` strategy: the JSON and metadata rules of
``src/strategy/marker_file.rs``, real inotify wake-ups (every wait bounded), and the config."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from zincati_py.config import load
from zincati_py.strategy import StrategyContext, build
from zincati_py.strategy.composite import Composite
from zincati_py.strategy.marker_file import MarkerFile, MarkerProblem, parse_allow_until

REL = "var/lib/zincati/admin/strategy/marker_file/allowfinalize.json"
U64_MAX = 2**64 - 1
# 1619640863 is Apr 28 2021 20:14:23 UTC (Zincati's own test value).
PAST = 1619640863


def marker_in(root: Path) -> Path:
    return root / REL


def strategy(node: Any) -> MarkerFile:
    node.write('[updates]\nstrategy = "marker_file"\n')
    built = node.build()
    assert isinstance(built, MarkerFile)
    return built


def ask(s: MarkerFile, now: datetime | None = None) -> Any:
    return asyncio.run(s.can_finalize(now or datetime.now(UTC)))


def put(path: Path, content: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    os.chmod(path, mode)


# -- the content, as serde_json reads FinalizationMarker { allow_until: Option<u64> } ----------

VALID = [
    ("{}", None),
    ("{}\n", None),
    (' \t\r\n{ "allowUntil" : 1619827200 }\n ', 1619827200),
    ('{"allowUntil": null}', None),
    ('{"allowUntil": 0}', 0),
    (f'{{"allowUntil": {U64_MAX}}}', U64_MAX),
    ('{"allowUntil": 5, "note": "by ansible", "n": -3, "f": 1.5}', 5),  # other keys ignored
    ('{"allow_until": 5}', None),  # camelCase only: this is an unknown key
    ('{"AllowUntil": 5}', None),
    ('{"x": {"allowUntil": 1, "allowUntil": 2}}', None),  # nested: skipped, not a field
    ('{"x": 1, "x": 2, "allowUntil": 7}', 7),  # duplicates of ignored keys are fine
    ('{"allow\\u0055ntil": 9}', 9),  # escapes decode to the field name
    ("[1619827200]", 1619827200),  # serde's sequence form of a struct
    ("[null]", None),
]

INVALID = [
    ("", "invalid JSON"),
    ("allowUntil=1619640863", "invalid JSON"),  # Zincati's own improper-JSON case
    ("{", "invalid JSON"),
    ('{"allowUntil": 5,}', "invalid JSON"),
    ("{} {}", "invalid JSON"),
    ("\ufeff{}", "invalid JSON"),  # byte-order mark
    ('{"allowUntil": NaN}', "invalid JSON"),
    ('{"allowUntil": Infinity}', "invalid JSON"),
    ("null", "expected a JSON object, got null"),
    ('"{}"', "expected a JSON object, got a string"),
    ("42", "expected a JSON object, got a number"),
    ("-1", "expected a JSON object, got a number"),
    ("true", "expected a JSON object, got a boolean"),
    ("[]", "got an array of 0 elements"),
    ("[1, 2]", "got an array of 2 elements"),
    ('{"allowUntil": -1}', "allowUntil must be a Unix timestamp"),
    ('{"allowUntil": -0}', "got -0"),
    ('{"allowUntil": 1619827200.0}', "got 1619827200.0"),
    ('{"allowUntil": 1e9}', "got 1000000000.0"),
    (f'{{"allowUntil": {U64_MAX + 1}}}', f"got {U64_MAX + 1}"),
    ('{"allowUntil": "1619827200"}', 'got "1619827200"'),
    ('{"allowUntil": true}', "got true"),
    ('{"allowUntil": {}}', "got {}"),
    ('{"allowUntil": [5]}', "got [5]"),
    ('{"allowUntil": 1, "allowUntil": 2}', "allowUntil is given more than once"),
    ('{"allowUntil": 1, "allowUntil": null}', "allowUntil is given more than once"),
    ('[{"allowUntil": 1}]', "allowUntil must be a Unix timestamp"),
]


@pytest.mark.parametrize(("content", "expected"), VALID)
def test_valid_content(content: str, expected: int | None) -> None:
    assert parse_allow_until(content.encode()) == expected


@pytest.mark.parametrize(("content", "problem"), INVALID)
def test_invalid_content(content: str, problem: str) -> None:
    with pytest.raises(MarkerProblem) as raised:
        parse_allow_until(content.encode())
    assert problem in str(raised.value)


@pytest.mark.parametrize("raw", [b'{"a": "\xff"}', b"\xfe\xff{}", b'{"a": "\xc3"}'])
def test_content_must_be_utf8(raw: bytes) -> None:
    with pytest.raises(MarkerProblem, match="not UTF-8"):
        parse_allow_until(raw)


def test_invalid_content_denies_naming_file_and_problem(node: Any) -> None:
    s = strategy(node)
    marker = marker_in(node.root)
    put(marker, "allowUntil=1619640863")
    verdict = ask(s)
    assert not verdict.allowed and verdict.recheck_at is None
    assert verdict.reason.startswith(f"marker file {marker}: invalid JSON: ")
    assert verdict.details["problem"].startswith("invalid JSON: ")
    put(marker, '{"allowUntil": "soon"}')
    verdict = ask(s)
    assert not verdict.allowed
    assert verdict.reason == (
        f"marker file {marker}: allowUntil must be a Unix timestamp "
        f'(an integer from 0 to {U64_MAX}), got "soon"'
    )


# -- metadata: exists, regular file (symlinks followed), not writable by others ---------------

MODES = [
    (0o644, True),
    (0o600, True),
    (0o400, True),
    (0o664, True),  # group-writable is fine: only "other" matters
    (0o755, True),
    (0o4644, True),
    (0o646, False),
    (0o666, False),
    (0o602, False),
    (0o777, False),  # Zincati's own test case
    (0o1777, False),
]


@pytest.mark.parametrize(("mode", "allowed"), MODES)
def test_mode(node: Any, mode: int, allowed: bool) -> None:
    s = strategy(node)
    marker = marker_in(node.root)
    put(marker, "{}", mode)
    verdict = ask(s)
    assert verdict.allowed is allowed, verdict.reason
    if not allowed:
        assert verdict.reason == (
            f"marker file {marker}: must not be writable by others (mode {mode:04o})"
        )
        assert verdict.details["problem"] == f"must not be writable by others (mode {mode:04o})"
    else:
        assert verdict.reason == f"marker file {marker} exists, no allowUntil"
        assert verdict.details["problem"] is None


def test_owner_is_not_checked(node: Any) -> None:
    # Zincati checks no ownership ("we don't check for ownership by root").
    if os.geteuid() != 0:
        pytest.skip("needs root to give the file away")
    s = strategy(node)
    marker = marker_in(node.root)
    put(marker, "{}")
    os.chown(marker, 65534, 65534)
    assert marker.stat().st_uid == 65534
    assert ask(s).allowed


def test_missing(node: Any) -> None:
    s = strategy(node)
    marker = marker_in(node.root)
    verdict = ask(s)
    assert not verdict.allowed and verdict.recheck_at is None
    assert verdict.reason == f"marker file {marker} does not exist"
    assert verdict.details["problem"] is None  # absent is not an error, as in Zincati


def test_not_a_regular_file(node: Any) -> None:
    s = strategy(node)
    marker = marker_in(node.root)
    marker.mkdir(parents=True)
    verdict = ask(s)
    assert not verdict.allowed
    assert verdict.reason == f"marker file {marker}: is not a regular file (a directory)"
    marker.rmdir()
    os.mkfifo(marker, 0o644)
    verdict = ask(s)  # must not block on the FIFO
    assert not verdict.allowed
    assert verdict.reason == f"marker file {marker}: is not a regular file (a FIFO)"


def test_symlinks_are_followed(node: Any) -> None:
    s = strategy(node)
    marker = marker_in(node.root)
    target = node.root / "elsewhere.json"
    put(target, "{}", 0o644)
    marker.parent.mkdir(parents=True)
    marker.symlink_to(target)  # the link's own mode (0777) does not count
    assert ask(s).allowed
    os.chmod(target, 0o666)
    assert "must not be writable by others (mode 0666)" in ask(s).reason
    target.unlink()
    assert ask(s).reason == f"marker file {marker} does not exist"  # dangling
    marker.unlink()
    marker.symlink_to(marker)  # stat fails otherwise: still no marker, not a problem
    loop = ask(s)
    assert not loop.allowed and loop.details["problem"] is None
    assert loop.reason == (
        f"marker file {marker} cannot be looked up (Too many levels of symbolic links)"
    )


def test_root_prefix_applies(node: Any) -> None:
    # Zincati's fixed path is read under --root, never on the host.
    assert strategy(node).marker == node.root / REL


# -- allowUntil: expired once the current whole second is >= it --------------------------------


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


EXPIRY = [
    # (allowUntil, now, allowed, recheck_at)
    (2_000_000_000, at(1_999_999_999), True, at(2_000_000_000)),
    (2_000_000_000, at(1_999_999_999.999), True, at(2_000_000_000)),  # whole seconds
    (2_000_000_000, at(2_000_000_000), False, None),  # >= : at the instant it expires
    (2_000_000_000, at(2_000_000_000.5), False, None),
    (PAST, datetime(2026, 11, 22, tzinfo=UTC), False, None),  # Zincati's expired example
    (0, datetime(2026, 11, 22, tzinfo=UTC), False, None),
    (U64_MAX, datetime(2026, 11, 22, tzinfo=UTC), True, None),  # beyond datetime: no recheck
]


@pytest.mark.parametrize(("until", "now", "allowed", "recheck"), EXPIRY)
def test_allow_until(
    node: Any, until: int, now: datetime, allowed: bool, recheck: datetime | None
) -> None:
    s = strategy(node)
    marker = marker_in(node.root)
    put(marker, f'{{"allowUntil": {until}}}')
    verdict = ask(s, now)
    assert (verdict.allowed, verdict.recheck_at) == (allowed, recheck), verdict.reason
    assert verdict.details["allow_until"] == until
    if allowed and recheck is not None:
        assert verdict.reason == f"marker file {marker} allows until {recheck.isoformat()}"
    if not allowed:
        assert "expired at" in verdict.reason


def test_status_reports_the_last_answer(node: Any) -> None:
    s = strategy(node)
    assert s.status()["reason"] == "not asked yet"
    put(marker_in(node.root), '{"allowUntil": 2000000000}')
    ask(s, at(1_900_000_000))
    status = s.status()
    assert status["name"] == "marker_file" and status["allowed"] is True
    assert status["recheck_at"] == "2033-05-18T03:33:20+00:00"
    assert status["allow_until"] == 2_000_000_000
    assert status["path"] == str(marker_in(node.root))


def test_problem_is_logged_once(node: Any, caplog: pytest.LogCaptureFixture) -> None:
    s = strategy(node)
    marker = marker_in(node.root)
    put(marker, "{", 0o644)
    with caplog.at_level(logging.ERROR, logger="zincati_py.strategy.marker_file"):
        ask(s)
        ask(s)
        assert len(caplog.records) == 1
        put(marker, "{}", 0o666)  # another problem: logged
        ask(s)
        assert len(caplog.records) == 2
        assert "must not be writable by others" in caplog.records[1].getMessage()
        put(marker, "{}", 0o644)
        assert ask(s).allowed
        put(marker, "{}", 0o666)  # the same problem again after a good answer: logged again
        ask(s)
        assert len(caplog.records) == 3


# -- inotify -----------------------------------------------------------------------------------


def test_inotify_wakes(node: Any) -> None:
    marker = marker_in(node.root)
    shutil.rmtree(node.root / "var", ignore_errors=True)

    async def scenario() -> None:
        s = strategy(node)
        await s.start()
        try:
            now = datetime.now(UTC)
            assert (await s.can_finalize(now)).details["watching"] == str(node.root)

            marker.parent.mkdir(parents=True)  # the watch follows the directories down
            assert await node.woken(1)
            assert node.wakes[0].startswith("marker_file: IN_CREATE")
            await asyncio.sleep(0.1)
            verdict = await s.can_finalize(now)
            assert verdict.details["watching"] == str(marker.parent)

            # An atomic replace, as the Zincati docs' Ansible-style example does it.
            staged = marker.parent / ".allowfinalize.tmp"
            staged.write_text("{}")
            n = len(node.wakes)
            assert await node.quiet(n)  # another name in the directory
            os.chmod(staged, 0o644)
            os.replace(staged, marker)
            assert await node.woken(n + 1)
            assert (await s.can_finalize(datetime.now(UTC))).allowed

            n = len(node.wakes)
            os.chmod(marker, 0o646)  # IN_ATTRIB
            assert await node.woken(n + 1)
            assert not (await s.can_finalize(datetime.now(UTC))).allowed
            n = len(node.wakes)
            os.chmod(marker, 0o644)
            assert await node.woken(n + 1)
            assert (await s.can_finalize(datetime.now(UTC))).allowed

            n = len(node.wakes)
            marker.write_text(f'{{"allowUntil": {PAST}}}')  # rewritten in place
            assert await node.woken(n + 1)
            expired = await s.can_finalize(datetime.now(UTC))
            assert not expired.allowed and "expired at 2021-04-28T20:14:23+00:00" in expired.reason

            n = len(node.wakes)
            marker.unlink()
            assert await node.woken(n + 1)
            gone = await s.can_finalize(datetime.now(UTC))
            assert gone.reason == f"marker file {marker} does not exist"
        finally:
            await s.stop()
        n = len(node.wakes)
        put(marker, "{}")  # stopped: no more wakes
        assert await node.quiet(n)

    asyncio.run(scenario())


# -- configuration -----------------------------------------------------------------------------


def test_config_loads_without_problems(config_root: Path) -> None:
    (config_root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (config_root / "etc/zincati/config.d/90-marker.toml").write_text(
        '[updates]\nstrategy = "marker_file"\n'
    )
    result = load(config_root)
    assert result.ok and not result.problems, [str(p) for p in result.problems]
    assert result.config.updates.strategy == ("marker_file",)
    built = build(StrategyContext(result.config, result.paths, lambda reason: None))
    assert isinstance(built, MarkerFile)


WINDOW = """
[updates]
strategy = ["periodic", "marker_file"]
[updates.periodic]
time_zone = "Europe/Berlin"
[[updates.periodic.window]]
days = ["Sat"]
start_time = "22:30"
length_minutes = 60
"""
INSIDE = datetime(2026, 11, 28, 21, 45, tzinfo=UTC)
CLOSES = datetime(2026, 11, 28, 22, 30, tzinfo=UTC)


def test_composition_with_periodic(node: Any) -> None:
    node.write(WINDOW)
    s = node.build()
    assert isinstance(s, Composite)
    assert [c.name for c in s.strategies] == ["periodic", "marker_file"]
    denied = asyncio.run(s.can_finalize(INSIDE))
    assert not denied.allowed and denied.details["denied_by"] == "marker_file"
    assert denied.reason.startswith("marker_file: marker file ")

    marker = marker_in(node.root)
    until = int((CLOSES - timedelta(minutes=15)).timestamp())
    put(marker, f'{{"allowUntil": {until}}}')
    allowed = asyncio.run(s.can_finalize(INSIDE))
    assert allowed.allowed, allowed.reason
    assert allowed.recheck_at == at(until)  # the marker expires before the window closes
    put(marker, "{}")
    assert asyncio.run(s.can_finalize(INSIDE)).recheck_at == CLOSES
