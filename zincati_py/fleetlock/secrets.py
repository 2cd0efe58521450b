"""Where the lock server's tokens come from: a file, a systemd credential, or (discouraged)
inline in the config file.

A systemd credential (``LoadCredential=NAME:PATH`` or ``SetCredentialEncrypted=`` in the unit)
is read from ``$CREDENTIALS_DIRECTORY/NAME``: systemd copies it there readable only by the
service, so the secret never needs to be readable by the service user on disk. A token file
is read at start and on SIGHUP; a file other users can read is reported as a warning.
Token values never reach a log line: only where they came from does.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zincati_py.fleetlock.protocol import MAX_ID_LENGTH

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
MAX_TOKEN_BYTES = 4096


class SecretError(Exception):
    """A token that cannot be read; the message says why (never the token)."""


@dataclass(frozen=True)
class Secret:
    value: str = ""
    # "inline", "file", "credential"
    origin: str = "inline"
    path: Path | None = None

    def __repr__(self) -> str:  # the value never goes into a repr, a log or a traceback
        return f"Secret(origin={self.origin!r}, path={self.path!r})"


def credential_path(name: str) -> Path:
    """``$CREDENTIALS_DIRECTORY/name``; the name must be a plain file name."""
    if not name or "/" in name or name in (".", ".."):
        raise SecretError(f"{name!r} is not a credential name (a plain file name)")
    directory = os.environ.get(CREDENTIALS_ENV)
    if not directory:
        raise SecretError(
            f"credential {name!r}: ${CREDENTIALS_ENV} is not set; give the service "
            f"LoadCredential={name}:/path/to/token (systemd 247 or later)"
        )
    return Path(directory) / name


def read_token(path: Path, origin: str) -> Secret:
    """The first line of ``path`` (surrounding whitespace stripped), which must not be empty."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise SecretError(f"{path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SecretError(f"{path}: not a regular file")
        raw = os.read(fd, MAX_TOKEN_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_TOKEN_BYTES:
        raise SecretError(f"{path}: longer than {MAX_TOKEN_BYTES} bytes: not a token")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise SecretError(f"{path}: not UTF-8 text") from None
    lines = text.strip().splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise SecretError(f"{path}: the token file is empty")
    if len(lines) > 1 or not token.isprintable() or " " in token:
        raise SecretError(f"{path}: a token is one line of printable characters without spaces")
    return Secret(token, origin, path)


def readable_by_others(path: Path) -> str | None:
    """``"mode 0644"`` when users other than the owner and group can read ``path``."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return f"mode {stat.S_IMODE(mode):04o}" if mode & stat.S_IROTH else None


class TokenReader:
    """Reads a config file's tokens; ``fail(key, message)`` makes the error to raise (it names
    the file and key); ``warnings`` collects files other users can read."""

    def __init__(self, path: Path, fail: Callable[[str, str], Exception]) -> None:
        self.path = path
        self.fail = fail
        self.warnings: list[str] = []

    def secret(self, name: str, *, inline: object, file: object, credential: object) -> Secret:
        """One token from exactly one of its three sources."""
        given = [v for v in (inline, file, credential) if v is not None]
        if len(given) != 1:
            raise self.fail(name, "give the token inline, as a file or as a credential, not both")
        if not isinstance(given[0], str) or not given[0]:
            raise self.fail(name, "must be a non-empty string")
        try:
            if inline is not None:
                assert isinstance(inline, str)
                if not inline.isprintable() or " " in inline:
                    raise SecretError("a token is printable characters without spaces")
                return Secret(inline, "inline")
            if file is not None:
                assert isinstance(file, str)
                return read_token(self.path.parent / file, "file")
            assert isinstance(credential, str)
            return read_token(credential_path(credential), "credential")
        except SecretError as exc:
            raise self.fail(name, str(exc)) from None

    def _warn_readable(self, name: str, secret: Secret) -> None:
        if secret.path is not None and secret.origin == "file":
            mode = readable_by_others(secret.path)
            if mode is not None:
                self.warnings.append(
                    f"{self.path}: {name}: {secret.path} holds a token and other users can "
                    f"read it ({mode}); chmod o-r it"
                )

    def token(self, auth: dict[str, Any], key: str) -> Secret | None:
        found = {s: auth.get(f"{key}{s}") for s in ("", "_file", "_credential")}
        if all(v is None for v in found.values()):
            return None
        set_keys = [f"auth.{key}{s}" for s, v in found.items() if v is not None]
        secret = self.secret(
            set_keys[0] if len(set_keys) == 1 else f"auth.{key}",
            inline=found[""],
            file=found["_file"],
            credential=found["_credential"],
        )
        self._warn_readable(set_keys[0], secret)
        return secret

    def node_tokens(self, nodes: object) -> dict[str, Secret]:
        if not isinstance(nodes, dict):
            raise self.fail("auth.nodes", "must be a table of node id = token")
        out: dict[str, Secret] = {}
        for node, value in nodes.items():
            name = f"auth.nodes.{node}"
            if not node or len(node) > MAX_ID_LENGTH or not node.isprintable():
                raise self.fail(name, "not a node id")
            if isinstance(value, dict):
                for k in value:
                    if k not in ("file", "credential"):
                        raise self.fail(f"{name}.{k}", "unknown key (use file or credential)")
                secret = self.secret(
                    name, inline=None, file=value.get("file"), credential=value.get("credential")
                )
            elif isinstance(value, str):
                secret = self.secret(name, inline=value, file=None, credential=None)
            else:
                raise self.fail(
                    name, "must be a token string, { file = ... } or { credential = ... }"
                )
            self._warn_readable(name, secret)
            out[node] = secret
        return out
