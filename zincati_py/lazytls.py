"""OpenSSL loaded when TLS is first needed, not when the agent starts (issue 17).

asyncio imports ``ssl`` when it is imported, only to have it at hand: ``try: import ssl /
except ImportError: ssl = None`` in ``base_events``, ``selector_events`` and ``sslproto``
(Python 3.11 to 3.13), and nothing else of asyncio keeps it. ``hashlib`` (imported by dbus-fast
and ``hmac``) loads OpenSSL's libcrypto when it can, though Python's own implementations serve
every hash the agent uses. Together that is about 5 MiB of resident memory (bench/agent_idle.py)
in an agent whose configuration may use no https URL at all.

:func:`defer`, called before asyncio is first imported, lets asyncio and hashlib load without
them. Nothing is lost: the first ``import ssl`` afterwards, by whatever needs TLS (the HTTP
client of an https fleet-lock or update-graph URL, prometheus-client's exposition), loads the
real module, which is then handed to asyncio where the stdlib keeps it (:func:`_give_asyncio`),
so TLS works from then on exactly as if ``ssl`` had been imported at the start. ``hashlib``
keeps Python's own implementations (``hmac`` its pure-Python one): same digests.

Only for the agent process (``zincati-py agent``); tests/agent/test_lazytls.py runs TLS through
asyncio and httpx after it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_ASYNCIO_MODULES = ("asyncio.base_events", "asyncio.selector_events", "asyncio.sslproto")


def defer() -> bool:
    """Import asyncio, hashlib and hmac without OpenSSL; True if done (False: too late, one
    of them or ``ssl`` is loaded already, and nothing changed)."""
    if any(m in sys.modules for m in ("asyncio", "ssl", "_ssl", "hashlib", "hmac")):
        return False
    blocked = ("ssl", "_ssl", "_hashlib")
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # "import X" raises ImportError
    try:
        import asyncio  # noqa: F401  (with ssl = None)
        import hashlib  # noqa: F401  (builtin hash implementations)
        import hmac  # noqa: F401
    finally:
        for name in blocked:
            del sys.modules[name]
    sys.meta_path.insert(0, _SslFinder())
    return True


def _give_asyncio(ssl: ModuleType) -> None:
    """What asyncio would have set at import time had ``ssl`` been importable then."""
    for name in _ASYNCIO_MODULES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "ssl", None) is None:
            module.ssl = ssl  # type: ignore[attr-defined]
    sslproto = sys.modules.get("asyncio.sslproto")
    if sslproto is not None and not hasattr(sslproto, "SSLAgainErrors"):
        sslproto.SSLAgainErrors = (ssl.SSLWantReadError, ssl.SSLSyscallError)  # type: ignore[attr-defined]


class _SslLoader(importlib.abc.Loader):
    """The real ``ssl`` loader, then :func:`_give_asyncio`."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self.real.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self.real.exec_module(module)
        _give_asyncio(module)


class _SslFinder(importlib.abc.MetaPathFinder):
    """Finds ``ssl`` once, the normal way, and wraps its loader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "ssl":
            return None
        sys.meta_path.remove(self)  # one use; the lookup below must not find us again
        spec = importlib.util.find_spec("ssl")
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _SslLoader(spec.loader)
        return spec
