"""One time-format helper per kind of input, one bus-daemon message builder, one dead-end MOTD
path (review finding 19): the former copies are these."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from zincati_py import timefmt


def test_iso_ts_whole_seconds_utc() -> None:
    assert timefmt.iso_ts(0.9) == "1970-01-01T00:00:00+00:00"
    assert timefmt.iso_ts(1_800_000_000) == "2027-01-15T08:00:00+00:00"
    assert timefmt.iso_ts(None) is None


def test_iso_dt_converts_to_utc_and_keeps_microseconds() -> None:
    when = datetime(2026, 12, 6, 21, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert timefmt.iso_dt(when) == "2026-12-06T20:00:00.123456+00:00"
    assert timefmt.iso_dt(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00+00:00"
    assert timefmt.iso_dt(None) is None


def test_the_former_copies_are_the_shared_helpers() -> None:
    from zincati_py.agent import status
    from zincati_py.cincinnati import motd
    from zincati_py.cli import common
    from zincati_py.dbus import busdaemon, logind, rpmostree
    from zincati_py.health import hooks
    from zincati_py.schedule import history

    assert status.iso is timefmt.iso_ts and common.iso is timefmt.iso_dt
    assert not hasattr(history, "_iso") and not hasattr(hooks, "_iso")
    assert logind.bus_msg is rpmostree.bus_msg is busdaemon.bus_msg
    assert not hasattr(logind, "_bus_msg") and not hasattr(rpmostree, "_bus_msg")
    assert hooks.DEADEND_MOTD_REL == motd.MOTD_REL
    msg = busdaemon.bus_msg("AddMatch", "s", "type='signal'")
    assert (msg.destination, msg.member, msg.body) == ("org.freedesktop.DBus", "AddMatch",
                                                        ["type='signal'"])  # fmt: skip
