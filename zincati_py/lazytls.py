"""OpenSSL loaded when TLS is first needed, not when the agent starts (issue 17).

asyncio imports ``ssl`` when it is imported, only to have it at hand: ``try: import ssl /
except ImportError: ssl = None`` in ``base_events``, ``selector_events`` and ``sslproto``
(Python 3.11 to 3.13), and nothing else of asyncio keeps it. ``hashlib`` (imported by dbus-fast
and ``hmac``) loads OpenSSL's libcrypto when it can, though Python's own implementations serve
every hash the agent uses. Together that is about 5 MiB of resident memory (bench/agent_idle.py)
in an agent whose configuration may use no https URL at all.

:func:`defer`, called before asyncio is first imported, lets asyncio and hashlib load without
them. Nothing is lost: an ``import ssl`` afterwards gives a stand-in module (:class:`_OnFirstUse`)
that loads the real one the first time one of its attributes is used (by whatever needs TLS:
the HTTP client of an https fleet-lock or update-graph URL, prometheus-client's exposition),
takes on all of its attributes and hands it to asyncio where the stdlib keeps it
(:func:`_give_asyncio`), so TLS works from then on exactly as if ``ssl`` had been imported at
the start. Importing the HTTP stack (httpx, httpcore, anyio, http.client) therefore costs no
OpenSSL: it only binds ``ssl``, and the one attribute it reads at import time, ``SSLContext``
(in annotations: ``httpcore._ssl``'s return type, anyio's ``from ssl import SSLContext``), is
given as a stand-in that loads the real class on any use. A fleet-lock client for an http://
URL then never loads OpenSSL (``zincati_py.fleetlock.client.new_session``). ``hashlib`` keeps
Python's own implementations (``hmac`` its pure-Python one): same digests.

The same stand-in (:class:`_OnFirstUse`) defers two more modules the idle agent imports but
does not use: ``ipaddress`` (urllib.parse's, for bracketed IPv6 hosts) and dbus-fast's
``xml.etree.ElementTree`` and ``xml.parsers.expat`` (introspection documents, parsed or
written only when a peer introspects the agent's API), about 0.5 MiB together.

Only for the agent process (``zincati-py agent``); tests/agent/test_lazytls.py runs TLS through
asyncio and httpx after it.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

# Held while a stand-in loads its module (re-entrant: hmac's loading uses hashlib's).
_LOADING = threading.RLock()
_ASYNCIO_MODULES = ("asyncio.base_events", "asyncio.selector_events", "asyncio.sslproto")


def defer() -> bool:
    """Import asyncio without OpenSSL, hashlib and hmac on first use (without it too); True
    if done (False: too late, one of them or ``ssl`` is loaded already, and nothing
    changed)."""
    if any(m in sys.modules for m in ("asyncio", "ssl", "_ssl", "hashlib", "hmac")):
        return False
    blocked = ("ssl", "_ssl", "_hashlib")
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # "import X" raises ImportError
    # hashlib loads its six builtin hash modules when imported (0.2 MiB): the agent at idle
    # uses none (dbus-fast hashes only introspection data it parses, the config only derives
    # a node id with it), so it is imported when first used (:class:`_OnFirstUse`).
    sys.modules["hashlib"] = _OnFirstUse("hashlib", without=("_hashlib",))
    sys.modules["hmac"] = _OnFirstUse("hmac", without=("_hashlib",))  # its pure-Python one
    # urllib.parse (dbus-fast parses bus addresses with it) imports ipaddress since Python 3.12
    # (0.25 MiB), only to check a bracketed IPv6 host: imported when first used.
    if "ipaddress" not in sys.modules:
        sys.modules["ipaddress"] = _OnFirstUse("ipaddress")
    # dbus-fast imports xml.etree.ElementTree (0.25 MiB with ElementPath) to parse and write
    # introspection XML, which the agent neither reads nor writes until a peer introspects
    # it; at import time it reads only ``Element``, in annotations.
    # dbus-fast imports xml.parsers.expat (pyexpat) for the same documents.
    if "xml.etree.ElementTree" not in sys.modules and "pyexpat" not in sys.modules:
        import xml.etree
        import xml.parsers

        tree = _OnFirstUse("xml.etree.ElementTree", annotations=frozenset({"Element"}))
        sys.modules["xml.etree.ElementTree"] = tree
        xml.etree.ElementTree = tree  # type: ignore[attr-defined]  # what "import ..." reads
        expat = _OnFirstUse("xml.parsers.expat")
        sys.modules["xml.parsers.expat"] = expat
        xml.parsers.expat = expat
    # asyncio's TLS protocol (0.1 MiB): base_events and selector_events use it only to make a
    # TLS transport; it is imported then (with the real ssl, see _give_asyncio).
    sslproto = _OnFirstUse("asyncio.sslproto")
    sys.modules["asyncio.sslproto"] = sslproto
    try:
        import asyncio  # (with ssl = None)

        asyncio.sslproto = sslproto  # type: ignore[attr-defined]  # "import asyncio.sslproto"
    finally:
        for name in blocked:
            del sys.modules[name]
    # The HTTP stack reads ``ssl.SSLContext`` at import time, only to annotate with.
    sys.modules["ssl"] = _OnFirstUse(
        "ssl", annotations=frozenset({"SSLContext"}), loaded=_give_asyncio
    )
    return True


class _OnFirstUse(ModuleType):
    """What ``import NAME`` gives after :func:`defer`: a stand-in that imports the real module
    on the first use of one of its attributes and takes them all on (``importlib.util``'s
    LazyLoader would not do: an ``import NAME`` statement alone loads it on Python 3.13).
    ``without``: modules kept unimportable meanwhile (hashlib's OpenSSL backend);
    ``annotations``: names read at import time only to annotate with, given as a
    :class:`_Deferred` until the module is loaded; ``loaded``: called with the real module once
    imported."""

    def __init__(
        self,
        name: str,
        without: tuple[str, ...] = (),
        annotations: frozenset[str] = frozenset(),
        loaded: Callable[[ModuleType], None] | None = None,
    ) -> None:
        super().__init__(name)
        self._without = without
        self._annotations = annotations
        self._loaded = loaded

    def __getattr__(self, name: str) -> Any:  # only for attributes not set (yet)
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        if name in self._annotations and isinstance(sys.modules.get(self.__name__), _OnFirstUse):
            return _Deferred(self.take, name)
        return self.take(name)

    def take(self, name: str) -> Any:
        """``NAME.name`` from the real module (imported now if need be)."""
        with _LOADING:  # another thread's first use swaps sys.modules too
            return self._take(name)

    def _take(self, name: str) -> Any:
        real = sys.modules.get(self.__name__)
        if real is None or isinstance(real, _OnFirstUse):
            del sys.modules[self.__name__]
            block = [m for m in self._without if m not in sys.modules]
            for m in block:
                sys.modules[m] = None  # type: ignore[assignment]
            try:
                real = importlib.import_module(self.__name__)
            except BaseException:
                sys.modules[self.__name__] = self
                raise
            finally:
                for m in block:
                    del sys.modules[m]
            if self._loaded is not None:
                self._loaded(real)
        self.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
        return getattr(real, name)


def _give_asyncio(ssl: ModuleType) -> None:
    """What asyncio would have set at import time had ``ssl`` been importable then."""
    for name in _ASYNCIO_MODULES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "ssl", None) is None:
            module.ssl = ssl  # type: ignore[attr-defined]
    sslproto = sys.modules.get("asyncio.sslproto")
    if sslproto is not None and not hasattr(sslproto, "SSLAgainErrors"):
        sslproto.SSLAgainErrors = (ssl.SSLWantReadError, ssl.SSLSyscallError)  # type: ignore[attr-defined]


class _Deferred:
    """Stands for ``MODULE.NAME`` (``ssl.SSLContext``, ``ElementTree.Element``) until it is
    used: then it is the real thing (calls, isinstance, subclassing and attributes go to it;
    only an identity test would tell them apart). ``take``: the stand-in module's loader."""

    def __init__(self, take: Callable[[str], Any], name: str) -> None:
        self._take = take
        self._name = name

    def _real(self) -> Any:
        return self._take(self._name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._real()(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._real(), attr)

    def __instancecheck__(self, obj: object) -> bool:
        return isinstance(obj, self._real())

    def __subclasscheck__(self, cls: type) -> bool:
        return issubclass(cls, self._real())

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        return (self._real(),)

    def __repr__(self) -> str:
        return f"<{self._name}, loaded on first use>"
