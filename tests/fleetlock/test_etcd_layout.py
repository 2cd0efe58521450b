"""The etcd backend's key layout (pure, fast tier): a group's queue in pages, a change
rewriting only the pages it touches, within etcd's 128 operations per transaction, and the
previous layout (the queue inside the group's document) read as is."""

from __future__ import annotations

import json

from zincati_py.fleetlock.backends.etcd_layout import (
    MARKER,
    Layout,
    Page,
    decode,
    encode_doc,
    encode_page,
    group_of_queue_key,
    plan,
    queue_base,
    range_end,
)
from zincati_py.fleetlock.state import GroupState, Holder, Waiter


def _queue(n: int, start: int = 0) -> list[Waiter]:
    return [Waiter(f"n{i:04d}", 1.0 + i, 1.0 + i) for i in range(start, start + n)]


def _stored(queue: list[Waiter], revision: int = 7) -> Layout:
    """The layout a first write of ``queue`` makes, as read back at ``revision``."""
    first = plan(Layout(), queue)
    return Layout(tuple(Page(p.number, p.entries, revision) for p in first.layout.pages))


def test_a_queue_is_written_in_pages_of_64() -> None:
    first = plan(Layout(), _queue(1000))
    assert [len(p.entries) for p in first.puts] == [64] * 15 + [40]
    assert [p.number for p in first.puts] == list(range(16))
    assert first.deletes == () and first.delete_range is None
    assert [w for p in first.layout.pages for w in p.entries] == _queue(1000)


def test_the_head_leaving_rewrites_one_page() -> None:
    queue = _queue(1000)
    step = plan(_stored(queue), queue[1:])
    assert [(p.number, len(p.entries)) for p in step.puts] == [(0, 63)]
    assert step.ops() == 1
    # Untouched pages keep their revision (a later read does not parse them again).
    assert all(p.mod_revision == 7 for p in step.layout.pages[1:])


def test_an_offer_changes_one_entry_in_place() -> None:
    queue = _queue(200)
    changed = [queue[0]._replace(offered=5.0), *queue[1:]]
    step = plan(_stored(queue), changed)
    assert [p.number for p in step.puts] == [0]
    assert step.puts[0].entries[0].offered == 5.0


def test_joining_fills_the_last_page_then_opens_new_ones() -> None:
    queue = _queue(100)  # pages 0 (64) and 1 (36)
    step = plan(_stored(queue), queue + _queue(40, start=100))
    assert [(p.number, len(p.entries)) for p in step.puts] == [(1, 64), (2, 12)]


def test_a_page_left_empty_is_deleted_and_its_number_not_reused_in_that_change() -> None:
    queue = _queue(70)  # pages 0 (64) and 1 (6)
    step = plan(_stored(queue), queue[64:] + _queue(1, start=500))
    assert step.deletes == (0,)
    assert [(p.number, len(p.entries)) for p in step.puts] == [(1, 7)]


def test_a_reordered_queue_is_still_stored_in_order() -> None:
    """Not a change a decision makes, but the pages must hold whatever queue they get."""
    queue = _queue(100)
    reordered = [queue[5], *queue[:5], *queue[6:]]
    step = plan(_stored(queue), reordered)
    assert [w for p in step.layout.pages for w in p.entries] == reordered
    assert all(len(p.entries) <= 64 for p in step.layout.pages)
    assert not {p.number for p in step.puts} & set(step.deletes)


def test_pages_the_change_left_alone_are_not_written() -> None:
    queue = _queue(300)
    changed = list(queue)
    changed[130] = changed[130]._replace(seen=99.0)  # on page 2
    del changed[200]  # on page 3
    step = plan(_stored(queue), changed)
    assert [p.number for p in step.puts] == [2, 3]
    assert [w for p in step.layout.pages for w in p.entries] == changed


def test_too_many_page_operations_rewrite_into_fewer_larger_pages() -> None:
    queue = _queue(1000)
    # Every page loses an entry: 16 page writes, over a limit of 8.
    thinned = [w for i, w in enumerate(queue) if i % 64 != 3]
    step = plan(_stored(queue), thinned, max_ops=8)
    assert step.ops() <= 8
    assert step.delete_range == (0, 15)
    assert [w for p in step.layout.pages for w in p.entries] == thinned


def test_stale_pages_are_deleted_by_the_next_write() -> None:
    step = plan(Layout(stale=(3, 9)), _queue(10))
    assert step.delete_range == (3, 9)
    assert [p.number for p in step.puts] == [10]


def test_documents_and_pages_round_trip() -> None:
    state = GroupState(holders={"h": Holder("h", 1.0, 2.0)}, queue=_queue(130), hold="40.1")
    first = plan(Layout(), state.queue)
    doc = encode_doc(state, first.layout)
    assert MARKER in json.loads(doc) and "queue" not in json.loads(doc)
    pages = [(p.number, encode_page(p), 11) for p in first.puts]
    got, layout = decode(doc, pages)
    assert got == state
    assert [p.mod_revision for p in layout.pages] == [11, 11, 11]


def test_the_previous_layout_is_read_and_its_pages_are_stale() -> None:
    state = GroupState(holders={"h": Holder("h", 1.0, None)}, queue=_queue(3))
    old_doc = json.dumps(state.to_json()).encode()  # the queue inside the document
    leftover = [(4, b"[]", 3)]  # pages a newer server wrote before an older one's write
    got, layout = decode(old_doc, leftover)
    assert got == state
    assert layout == Layout(stale=(4,))


def test_pages_not_listed_by_the_document_are_stale_and_ignored() -> None:
    state = GroupState(queue=_queue(2))
    first = plan(Layout(), state.queue)
    pages = [(p.number, encode_page(p), 5) for p in first.puts]
    pages.append((8, encode_page(Page(8, tuple(_queue(1, start=50)))), 6))
    got, layout = decode(encode_doc(state, first.layout), pages)
    assert got.queue == state.queue
    assert layout.stale == (8,)


def test_cached_pages_with_the_same_revision_are_not_parsed_again() -> None:
    state = GroupState(queue=_queue(70))
    first = plan(Layout(), state.queue)
    cached = Layout(tuple(Page(p.number, p.entries, 9) for p in first.layout.pages))
    # Page 0 as stored is garbage: reused from the cache by its revision, never parsed.
    pages = [(0, b"not json", 9), (1, encode_page(first.layout.pages[1]), 10)]
    got, layout = decode(encode_doc(state, first.layout), pages, cached)
    assert got.queue == state.queue
    assert [p.mod_revision for p in layout.pages] == [9, 10]


def test_queue_keys_of_groups_never_share_a_prefix() -> None:
    a, ab = queue_base(b"/p/", "a"), queue_base(b"/p/", "a/b")
    assert not ab.startswith(a)
    assert range_end(a) > a + b"999999999999"
    assert group_of_queue_key(b"/p/", ab + b"000000000012") == ("a/b", 12)
