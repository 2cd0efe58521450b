"""``zincati-py-hook@.service``: the generated template unit the event hooks run in.

The generator renders it from ``[agent.hooks] commands`` (nothing when there are none), every
string through :mod:`zincati_py.unitfile`: each command is one ``ExecStart=-…`` line (``-``: a
failing hook never stops the next one), its words quoted as exec words (``%`` and ``$``
escaped, so systemd passes exactly what the admin wrote). The agent starts
``zincati-py-hook@INSTANCE.service`` (polkit lets its user start exactly these) after writing
``/run/zincati-py/hooks/INSTANCE.env`` with the event, versions and reason (shell-quoted), which
each command's ``/bin/sh`` loader reads as the hook's user before ``exec``-ing the command. On
the system manager it runs as the agent's user, bounded by ``timeout_secs``; the unit's
content comes from root's configuration only, so starting it grants the agent nothing more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zincati_py import unitfile
from zincati_py.health import spec

if TYPE_CHECKING:
    from zincati_py.config import Settings

TEMPLATE = "zincati-py-hook@.service"
HOOKS_DIR_REL = "run/zincati-py/hooks"
AGENT_USER = "zincati-py"


def unit_name(instance: str) -> str:
    return f"zincati-py-hook@{instance}.service"


# Runs as the hook's user: loads the instance's variables (written by the agent, same user,
# values shell-quoted), then becomes the admin's command. Not EnvironmentFile=, which the
# service manager reads as root from a directory the agent's user owns.
LOADER = 'set -a; . "$0" || exit 1; set +a; exec "$@"'


def render(config: Settings, header: str, root: str = "/", user: bool = False) -> str | None:
    """The template's text, or None without hooks. Raises ``unitfile.UnsafeValue`` for a
    string that cannot be written safely (config check refuses those first)."""
    hooks = config.agent.hooks
    if not hooks.commands:
        return None
    directory = unitfile.setting(f"{root.rstrip('/')}/{HOOKS_DIR_REL}", "root")
    env_file = unitfile.exec_word(directory.replace("%%", "%")) + "/%i.env"
    lines = [
        header,
        "[Unit]",
        "Description=zincati-py event hook (%i)",
        "",
        "[Service]",
        "Type=oneshot",
        f"TimeoutStartSec={hooks.timeout_secs}s",
    ]
    if not user:
        lines += [f"User={AGENT_USER}", f"Group={AGENT_USER}"]
    loader = f"/bin/sh -c {unitfile.exec_word(LOADER)} {env_file}"
    for text in hooks.commands:
        argv = spec.parse(text).argv
        lines.append(f"ExecStart=-{loader} " + " ".join(unitfile.exec_word(w) for w in argv))
    return "\n".join(lines) + "\n"
