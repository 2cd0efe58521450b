"""How the etcd backend lays a group's state out in keys (pure: no etcd client here).

A group is its document, ``{prefix}groups/{group}`` (holders, counters, pause, ... as in
:meth:`GroupState.to_json`, without the queue), plus its FIFO queue in pages of at most
:data:`PAGE_SIZE` entries, ``{prefix}queues/{quoted group}/{page number}``, numbered in queue
order. The document lists its pages (``"queue_pages"``): a grant or a release rewrites the
small document and the one page it touched, not a 60 KB document holding a 1,000-node
queue. Every change puts the document, so its ``mod_revision`` still orders every change of
the group (the compare-and-swap compares only that key).

The previous layout (the queue inside the document, ``"queue"``) is read as is and moved to
pages by the next write. A document without ``"queue_pages"`` (that layout, or a write by a
server that predates pages) owns the queue: pages found then are stale and deleted by the
next write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from zincati_py.fleetlock.state import GroupState, Waiter

PAGE_SIZE = 64
# Most page operations one change may take (etcd refuses transactions of more than 128
# operations, --max-txn-ops): past it, the queue is rewritten into at most this many pages.
MAX_PAGE_OPS = 64
MARKER = "queue_pages"


@dataclass(frozen=True)
class Page:
    number: int
    entries: tuple[Waiter, ...]
    mod_revision: int = 0


@dataclass(frozen=True)
class Layout:
    """Where a group's queue is: ``pages`` (in order, none empty) and ``stale`` page numbers
    found in etcd that belong to no page (deleted by the next write)."""

    pages: tuple[Page, ...] = ()
    stale: tuple[int, ...] = ()

    def next_number(self) -> int:
        numbers = [p.number for p in self.pages] + list(self.stale)
        return max(numbers) + 1 if numbers else 0


@dataclass(frozen=True)
class Plan:
    """What one change writes of the queue: ``puts`` (pages, whole), ``deletes`` (page
    numbers), or with ``delete_range`` every page numbered in ``[first, last]``."""

    layout: Layout
    puts: tuple[Page, ...] = ()
    deletes: tuple[int, ...] = ()
    delete_range: tuple[int, int] | None = None

    def ops(self) -> int:
        return len(self.puts) + len(self.deletes) + (self.delete_range is not None)


def queue_base(prefix: bytes, group: str) -> bytes:
    """The key prefix of a group's pages (the group name quoted: no ``/`` in it, so no group
    shares another's prefix)."""
    return prefix + b"queues/" + quote(group, safe="").encode() + b"/"


def group_of_queue_key(prefix: bytes, key: bytes) -> tuple[str, int] | None:
    rest = key[len(prefix + b"queues/") :].decode()
    quoted, _, number = rest.rpartition("/")
    if not quoted or not number.isdigit():
        return None
    return unquote(quoted), int(number)


def page_key(base: bytes, number: int) -> bytes:
    return base + f"{number:012d}".encode()


def range_end(base: bytes) -> bytes:
    """The end of the key range holding every key that starts with ``base``."""
    return base[:-1] + bytes([base[-1] + 1])


def encode_doc(state: GroupState, layout: Layout) -> bytes:
    doc = {
        "holders": [h.to_json() for h in state.holders.values()],
        **state.extras_json(queue=False),
        MARKER: [p.number for p in layout.pages],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def encode_page(page: Page) -> bytes:
    return json.dumps([w.to_json() for w in page.entries], separators=(",", ":")).encode()


def decode(
    doc_value: bytes | None,
    pages: list[tuple[int, bytes, int]],
    cached: Layout | None = None,
) -> tuple[GroupState, Layout]:
    """A group's state from its document and the pages found (``(number, value,
    mod_revision)``); pages of ``cached`` with an unchanged revision are not parsed again."""
    if doc_value is None:
        return GroupState(), Layout(stale=tuple(n for n, _, _ in pages))
    doc: dict[str, Any] = json.loads(doc_value)
    listed = doc.pop(MARKER, None)
    if not isinstance(listed, list):  # the previous layout: the queue is in the document
        return GroupState.from_json(doc), Layout(stale=tuple(n for n, _, _ in pages))
    wanted = set(listed)
    known = {p.number: p for p in cached.pages} if cached is not None else {}
    found: list[Page] = []
    stale: list[int] = []
    for number, value, revision in sorted(pages):
        if number not in wanted:
            stale.append(number)
            continue
        page = known.get(number)
        if page is None or page.mod_revision != revision:
            entries = tuple(Waiter.from_json(w) for w in json.loads(value))
            page = Page(number, entries, revision)
        found.append(page)
    queue = [w for p in found for w in p.entries]
    return GroupState.from_json(doc, queue=queue), Layout(tuple(found), tuple(stale))


def plan(
    layout: Layout,
    queue: list[Waiter],
    *,
    page_size: int = PAGE_SIZE,
    max_ops: int = MAX_PAGE_OPS,
) -> Plan:
    """The page writes that turn ``layout`` into ``queue``. A queue changes by entries
    leaving, changing in place and joining at the end: those touch the pages they are on
    (and the last page); a page the change left alone is recognised by comparing it whole.
    Stale pages, or more than ``max_ops`` page operations: the queue is rewritten into fresh
    pages. (Walking the pages in order against the queue, an entry not next in the queue
    has left; what is left of the queue after the pages joined. Even for a reordering the
    pages then hold the queue in order, with more pages rewritten.)"""
    kept: list[Page] = []
    puts: list[Page] = []
    deletes: list[int] = []
    i, end = 0, len(queue)
    for page in layout.pages:
        count = len(page.entries)
        if tuple(queue[i : i + count]) == page.entries:
            kept.append(page)
            i += count
            continue
        entries = []
        for w in page.entries:
            if i < end and queue[i].id == w.id:
                entries.append(queue[i])
                i += 1
        if not entries:
            deletes.append(page.number)
            continue
        kept.append(Page(page.number, tuple(entries)))
        puts.append(kept[-1])
    joined = queue[i:]
    if not layout.stale:
        number = layout.next_number()
        while joined:
            if kept and len(kept[-1].entries) < page_size:
                last = kept.pop()
                room = page_size - len(last.entries)
                page = Page(last.number, last.entries + tuple(joined[:room]))
                puts = [p for p in puts if p.number != last.number]
                joined = joined[room:]
            else:
                page, joined = Page(number, tuple(joined[:page_size])), joined[page_size:]
                number += 1
            kept.append(page)
            puts.append(page)
        if len(puts) + len(deletes) <= max_ops:
            return Plan(Layout(tuple(kept)), tuple(puts), tuple(deletes))
    return rewrite(layout, queue, page_size=page_size, max_ops=max_ops)


def rewrite(
    layout: Layout, queue: list[Waiter], *, page_size: int = PAGE_SIZE, max_ops: int = MAX_PAGE_OPS
) -> Plan:
    """The whole queue into fresh pages numbered after every existing one (at most
    ``max_ops - 1`` of them, larger than ``page_size`` if need be), the old ones deleted by
    one range delete."""
    old = [p.number for p in layout.pages] + list(layout.stale)
    first = layout.next_number()
    size = max(page_size, -(-len(queue) // max(1, max_ops - 1)))
    pages = tuple(
        Page(first + i, tuple(queue[start : start + size]))
        for i, start in enumerate(range(0, len(queue), size))
    )
    gone = (min(old), max(old)) if old else None
    return Plan(Layout(pages), pages, (), gone)
