"""rpm-ostree transactions: a peer-to-peer D-Bus connection to the address rpm-ostreed returns.

A long rpm-ostree operation (``UpdateDeployment``...) answers with the address of a private
D-Bus server, not a bus: we connect without ``Hello``, call ``Start()`` and wait for
``Finished(success, error_message)``. Used by :mod:`zincati_py.dbus.rpmostree`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

log = logging.getLogger("zincati_py.dbus.rpmostree")

TXN_IFACE = "org.projectatomic.rpmostree1.Transaction"


class RpmOstreeError(Exception):
    """rpm-ostree refused or failed an operation; the message says what and why."""


class TransactionFailed(RpmOstreeError):
    """A transaction ended with ``Finished(false, message)`` or lost its connection."""


class _PeerConnection(MessageBus):
    """dbus-fast's MessageBus without the ``Hello`` call, which only a bus daemon answers.

    dbus-fast has no public peer-to-peer mode (python-dbus-next issue #20); this reuses its
    socket setup, SASL and message reader and skips registration.
    """

    async def connect(self) -> MessageBus:
        from dbus_fast.aio.message_bus import _MessageWriter
        from dbus_fast.aio.message_reader import build_message_reader

        transport, options = self._bus_address[0]
        sock, stream, address = self._create_socket_for_transport(transport, options)
        try:
            sock.setblocking(False)
            await self._loop.sock_connect(sock, address)
            self._sock = sock
            self._stream = stream
            self._fd = sock.fileno()
            self._writer = _MessageWriter(self)
            await self._authenticate()
        except BaseException:
            stream.close()
            sock.close()
            raise
        self.unique_name = ":p2p"
        self._loop.add_reader(
            self._fd,
            build_message_reader(
                self._sock, self._process_message, self._finalize, self._negotiate_unix_fd
            ),
        )
        return self


async def run_transaction(address: str, timeout: float) -> None:
    """Connect to a transaction, ``Start()`` it and wait for ``Finished``.

    Raises :class:`TransactionFailed` on ``Finished(false, msg)`` or a lost connection and
    :class:`TimeoutError` (after trying ``Cancel()``) when it does not finish in time.
    """
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[tuple[bool, str]] = loop.create_future()

    def on_message(msg: Message) -> None:
        if (
            msg.message_type == MessageType.SIGNAL
            and msg.interface == TXN_IFACE
            and msg.member == "Finished"
            and not finished.done()
        ):
            finished.set_result((bool(msg.body[0]), str(msg.body[1])))
        elif msg.message_type == MessageType.SIGNAL and msg.member == "Message":
            log.info("rpm-ostree: %s", msg.body[0])

    try:
        peer = await asyncio.wait_for(_PeerConnection(bus_address=address).connect(), timeout)
    except (OSError, EOFError, TimeoutError) as e:
        raise TransactionFailed(f"cannot connect to transaction {address}: {e}") from e
    peer.add_message_handler(on_message)
    lost = loop.create_task(peer.wait_for_disconnect())  # type: ignore[no-untyped-call]
    try:
        reply = await asyncio.wait_for(
            peer.call(Message(path="/", interface=TXN_IFACE, member="Start")), timeout
        )
        if reply is None or reply.message_type == MessageType.ERROR:
            detail = "no reply" if reply is None else f"{reply.error_name}: {reply.body}"
            raise TransactionFailed(f"Start failed: {detail}")
        done, _ = await asyncio.wait(
            {finished, lost}, timeout=timeout, return_when="FIRST_COMPLETED"
        )
        if finished in done:
            success, error = finished.result()
            if not success:
                raise TransactionFailed(error or "transaction failed")
            return
        if lost in done:
            raise TransactionFailed("transaction connection closed before Finished")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                peer.call(Message(path="/", interface=TXN_IFACE, member="Cancel")), 5
            )
        raise TimeoutError(f"transaction did not finish within {timeout}s")
    finally:
        lost.cancel()
        peer.disconnect()
