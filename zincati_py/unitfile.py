"""Strings written into systemd unit files: escaped for what systemd interprets, or refused.

Every string that reaches a generated unit goes through one of these (systemd.syntax(7),
systemd.unit(5) "Specifiers", systemd.service(5) "Command lines"):

- ``setting(text)`` for a setting's value (``SourcePath=``, ``Description=`` parts):
  control characters are refused (systemd ends a line at ``\\n``, ``\\r`` and NUL, so one would
  start a new directive), a trailing backslash is refused (it continues the line) and ``%``
  becomes ``%%`` (a literal percent, not a specifier).
- ``comment(text)`` for a ``#`` line: control characters shown as ``\\xNN`` escapes, so the
  text stays one comment line.
- ``exec_word(arg)``/``quote_exec_arg(arg)`` for one word of an ``Exec*=`` line: quoted with C
  escapes (``\\n``, ``\\t``, ``\\xNN``, ``\\\\``, ``\\"``), ``%`` → ``%%`` and ``$`` → ``$$``
  (no variable substitution), so systemd hands the program exactly ``arg``.
- ``control_characters(text)`` says which control characters a text holds (for error
  messages: ``config check`` refuses a fragment whose file name holds any).

Imported by the generator on every boot: no imports beyond the builtins.
"""

from __future__ import annotations

__all__ = [
    "UnsafeValue",
    "comment",
    "control_characters",
    "escape_specifiers",
    "exec_word",
    "quote_exec_arg",
    "setting",
]


class UnsafeValue(ValueError):
    """A string that cannot be written into a unit file safely; the message is user-facing."""


def _is_control(ch: str) -> bool:
    # C0 controls, DEL, the C1 controls (U+0080..U+009F) and lone surrogates (a file name's
    # bytes that are not UTF-8, as Python decodes them: they cannot be written as UTF-8).
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF


def _shown(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        code -= 0xDC00  # surrogateescape: the original byte
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, f"\\x{code:02x}")


def control_characters(text: str) -> list[str]:
    """The distinct control characters in ``text`` as ``\\n``, ``\\x1b``, ... (in order)."""
    found: list[str] = []
    for ch in text:
        if _is_control(ch):
            shown = _shown(ch)
            if shown not in found:
                found.append(shown)
    return found


def escape_specifiers(text: str) -> str:
    """``%`` starts a specifier in every unit setting; ``%%`` is a literal ``%``."""
    return text.replace("%", "%%")


def setting(text: str, what: str = "value") -> str:
    """``text`` as a setting's value, or UnsafeValue naming ``what`` and the problem."""
    bad = control_characters(text)
    if bad:
        raise UnsafeValue(f"{what} contains control characters ({' '.join(bad)})")
    if text.endswith("\\"):
        raise UnsafeValue(f"{what} ends in a backslash (it would continue the line)")
    return escape_specifiers(text)


def comment(text: str) -> str:
    """``text`` for a ``#`` comment line: control characters escaped, one line whatever it holds."""
    if not any(_is_control(ch) for ch in text):
        return text
    return "".join(_shown(ch) if _is_control(ch) else ch for ch in text)


def quote_exec_arg(arg: str) -> str:
    """One ``ExecStart=`` word that systemd turns back into exactly ``arg``.

    systemd resolves ``%`` specifiers on the whole line, splits it into words (honouring double
    quotes and C escapes inside them), then substitutes ``$VAR``/``${VAR}`` with ``$$`` as a
    literal ``$`` (systemd.service(5), "Command lines").
    """
    out = []
    for ch in arg:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "%":
            out.append("%%")
        elif ch == "$":
            out.append("$$")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _plain(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch in "/._+:=,@-")


def exec_word(arg: str) -> str:
    """``arg`` as an ``Exec*=`` word: bare when it needs no quoting (readable units)."""
    return arg if arg and all(_plain(ch) for ch in arg) else quote_exec_arg(arg)
