"""Calls to the bus daemon itself (``org.freedesktop.DBus``: AddMatch, RemoveMatch, ...),
shared by the adapters that talk to it on their own connection."""

from __future__ import annotations

from typing import Any

from dbus_fast import Message


def bus_msg(member: str, signature: str, *body: Any) -> Message:
    """A method call ``member`` on the bus daemon."""
    return Message(
        destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus",
        member=member,
        signature=signature,
        body=list(body),
    )
