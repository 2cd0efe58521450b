"""Install the project into a rootfs the way the RPM does, plus the test bed's stand-ins.

The RPM part is not a copy of the spec: :func:`spec_install_commands` takes the ``%install``
section of ``packaging/zincati-py.spec`` itself, expands Fedora's macro values and runs it
with ``%{buildroot}`` = the rootfs, so a path changed in the spec changes here too (an unknown
macro is an error, not a guess); ``%files``' ``%attr(...)`` owners and modes are applied as
rpm does. ``%pyproject_install`` becomes pip installing the wheels with
Debian's system layout (``/usr/bin``, ``/usr/lib/python3/dist-packages``: the counterpart of
Fedora's ``/usr/bin`` + ``site-packages``). The scriptlets follow: ``%pre``'s sysusers
(``systemd-sysusers --root``), ``%post``'s ``systemctl preset`` under Fedora's preset policy
("disable *" unless an image preset enables the unit, as Fedora CoreOS enables zincati.service),
and ``%tmpfiles_create`` happens at boot (systemd-tmpfiles-setup).

Stand-ins for what Fedora has and Debian lacks (and nothing else):

- ``rpm-ostreed.service`` (Type=dbus, D-Bus-activated, root) running the rpm-ostree double over
  ``/`` with the bus policy of rpm-ostree's ``org.projectatomic.rpmostree1.conf``;
- ``/usr/bin/ostree`` running :mod:`testbed.ostree`;
- ``ostree-finalize-staged.path``/``.service`` as ostree ships them: the staged deployment is
  finalized by ``ExecStop=`` when the system goes down (``ostree admin finalize-staged``);
- ``/run/ostree-booted``, which ostree-prepare-root creates on an ostree boot (a unit here).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SPEC = "packaging/zincati-py.spec"

# Fedora's values (systemd-rpm-macros, redhat-rpm-config) for the macros the spec's %install uses.
FEDORA_MACROS = {
    "_prefix": "/usr",
    "_bindir": "/usr/bin",
    "_datadir": "/usr/share",
    "_sysconfdir": "/etc",
    "_unitdir": "/usr/lib/systemd/system",
    "_systemdgeneratordir": "/usr/lib/systemd/system-generators",
    "_sysusersdir": "/usr/lib/sysusers.d",
    "_tmpfilesdir": "/usr/lib/tmpfiles.d",
    "_presetdir": "/usr/lib/systemd/system-preset",
}
# Lines of %install that pip (or nothing) stands for.
_PYTHON_MACROS = ("%pyproject_install", "%pyproject_save_files")

SCRIPT_PATH = "/etc/zincati-py-testbed/rpmostree-script.json"
SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"


class SpecError(RuntimeError):
    pass


def _section(spec: str, name: str) -> list[str]:
    lines = spec.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(rf"%{name}(\s|$)", line)]
    if not starts:
        raise SpecError(f"{SPEC}: no %{name} section")
    start = starts[0] + 1
    out = []
    for line in lines[start:]:
        if re.match(r"%(check|files|pre|post|preun|postun|changelog|build|prep)\b", line):
            break
        out.append(line)
    return out


def spec_install_commands(spec: str, buildroot: Path, sources: Mapping[str, str]) -> list[str]:
    """The spec's ``%install`` as shell commands for ``buildroot`` (comments, blank lines and
    the Python macros dropped, continuation lines joined)."""
    joined: list[str] = []
    pending = ""
    for raw in _section(spec, "install"):
        line = pending + raw
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith(_PYTHON_MACROS):
            continue
        joined.append(stripped)
    values = {**FEDORA_MACROS, "buildroot": str(buildroot), **sources}
    commands = []
    for line in joined:
        expanded = _expand(line, values)
        if "%" in expanded.replace("%%", ""):
            raise SpecError(f"{SPEC}: %install line with an unknown macro: {line}")
        commands.append(expanded.replace("%%", "%"))
    return commands


def _expand(line: str, values: Mapping[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            raise SpecError(f"{SPEC}: %{{{name}}} in {line!r}: the test bed cannot expand it")
        return values[name]

    return re.sub(r"%\{\??([A-Za-z0-9_]+)\}", one, line)


def spec_file_attrs(spec: str) -> list[tuple[str, str, str, str]]:
    """``(mode, user, group, path)`` of every ``%attr(...)`` line of ``%files`` (what rpm sets
    when it installs the file; ``-`` keeps what ``%install`` left)."""
    out = []
    for line in _section(spec, "files"):
        m = re.match(r"\s*%attr\(\s*([0-7]+|-)\s*,\s*([\w-]+)\s*,\s*([\w-]+)\s*\)\s+(.*)$", line)
        if not m:
            continue
        path = re.sub(r"%(config|dir|doc|license|ghost)(\([^)]*\))?\s*", "", m.group(4)).strip()
        out.append((m.group(1), m.group(2), m.group(3), _expand(path, FEDORA_MACROS)))
    return out


def _ids(root: Path, table: str) -> dict[str, int]:
    ids = {}
    for line in (root / "etc" / table).read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2:
            ids[fields[0]] = int(fields[2])
    return ids


def apply_file_attrs(root: Path, spec: str) -> None:
    users, groups = _ids(root, "passwd"), _ids(root, "group")
    for mode, user, group, path in spec_file_attrs(spec):
        target = root / path.lstrip("/")
        if mode != "-":
            target.chmod(int(mode, 8))
        uid = -1 if user == "-" else users[user]
        gid = -1 if group == "-" else groups[group]
        os.chown(target, uid, gid, follow_symlinks=False)


def _chroot(
    root: Path, *argv: str, env: Mapping[str, str] | None = None, timeout: float = 300
) -> None:
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
    proc = subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in {**base, **(env or {})}.items()),
         "chroot", str(root), *argv],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"chroot {root} {' '.join(argv)}: {proc.returncode}\n{proc.stderr}")


def pip_install(root: Path, wheelhouse: Path, names: Iterable[str]) -> None:
    """Install ``names`` from ``wheelhouse`` into the rootfs's system Python (no network)."""
    inside = root / "var/tmp/zpy-wheelhouse"
    shutil.rmtree(inside, ignore_errors=True)
    shutil.copytree(wheelhouse, inside)
    try:
        _chroot(
            root, "python3", "-m", "pip", "install", "-q", "--no-index", "--find-links",
            "/var/tmp/zpy-wheelhouse", "--break-system-packages", "--root-user-action=ignore",
            "--no-warn-script-location", "--disable-pip-version-check", *names,
            env={"DEB_PYTHON_INSTALL_LAYOUT": "deb_system"},  # /usr/bin, /usr/lib/python3
        )  # fmt: skip
    finally:
        shutil.rmtree(inside, ignore_errors=True)


def install_rpm_layout(root: Path, checkout: Path, wheelhouse: Path) -> None:
    """``%install`` + ``%pre`` of the spec into ``root`` (units not yet enabled)."""
    pip_install(root, wheelhouse, ["zincati-py"])
    spec = (checkout / SPEC).read_text()
    sources = {"SOURCE1": str(checkout / "packaging/zincati-py.sysusers")}
    script = "set -euo pipefail\n" + "\n".join(spec_install_commands(spec, root, sources))
    proc = subprocess.run(
        ["bash", "-c", script], cwd=checkout, capture_output=True, text=True, timeout=60
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{SPEC} %install failed ({proc.returncode}):\n{proc.stderr}")
    # %pre: %sysusers_create_compat (the same users systemd-sysusers.service creates at boot).
    subprocess.run(
        ["systemd-sysusers", f"--root={root}", f"{root}/usr/lib/sysusers.d/zincati-py.conf"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    # What rpm does when it installs the files: %files' %attr owners and modes.
    apply_file_attrs(root, spec)


# ---- the test bed's stand-ins ----------------------------------------------------------------

_RPMOSTREED_UNIT = f"""\
# zincati-py test bed: rpm-ostreed's unit (rpm-ostree's rpm-ostreed.service.in) running the
# rpm-ostree double over / instead of rpm-ostree start-daemon.
[Unit]
Description=rpm-ostree System Management Daemon (zincati-py test bed double)

[Service]
Type=dbus
BusName=org.projectatomic.rpmostree1
MountFlags=slave
ProtectHome=true
NotifyAccess=main
ExecStart=/usr/bin/python3 -m testbed.rpmostree --bus {SYSTEM_BUS} --root / --script {SCRIPT_PATH}
"""

_RPMOSTREED_ACTIVATION = """\
[D-BUS Service]
Name=org.projectatomic.rpmostree1
Exec=/bin/false
User=root
SystemdService=rpm-ostreed.service
"""

# rpm-ostree's src/daemon/org.projectatomic.rpmostree1.conf, whose default context allows
# Sysroot.GetOS only; the whole Sysroot interface is allowed here because the agent (like the
# rpm-ostree CLI clients) calls RegisterClient/UnregisterClient/Reload, which rpm-ostreed then
# authorizes through polkit (client-management, reload-daemon).
_RPMOSTREED_POLICY = """\
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root">
    <allow own="org.projectatomic.rpmostree1"/>
    <allow send_destination="org.projectatomic.rpmostree1"/>
  </policy>
  <policy context="default">
    <deny send_destination="org.projectatomic.rpmostree1"/>
    <allow send_destination="org.projectatomic.rpmostree1"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.projectatomic.rpmostree1"
           send_interface="org.freedesktop.DBus.ObjectManager"/>
    <allow send_destination="org.projectatomic.rpmostree1"
           send_interface="org.freedesktop.DBus.Peer"/>
    <allow send_destination="org.projectatomic.rpmostree1"
           send_interface="org.freedesktop.DBus.Properties" send_member="Get"/>
    <allow send_destination="org.projectatomic.rpmostree1"
           send_interface="org.freedesktop.DBus.Properties" send_member="GetAll"/>
    <allow send_destination="org.projectatomic.rpmostree1"
           send_interface="org.projectatomic.rpmostree1.OS"/>
    <allow send_destination="org.projectatomic.rpmostree1"
           send_interface="org.projectatomic.rpmostree1.Sysroot"/>
  </policy>
</busconfig>
"""

# The action ids of rpm-ostree's org.projectatomic.rpmostree1.policy (current releases; the
# client-management, reload-daemon, deploy and finalize-deployment ones came after 2018). The
# defaults are auth_admin for everyone (rpm-ostree allows some for active local sessions); what
# matters here is that the actions exist, so polkit evaluates our rules for them.
_RPMOSTREE_ACTIONS = (
    "package-install-uninstall", "rebase", "deploy", "upgrade", "rollback", "bootconfig",
    "reload-daemon", "cleanup", "client-management", "override", "repo-refresh",
    "finalize-deployment", "set-initramfs-state",
)  # fmt: skip
_RPMOSTREE_POLKIT = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<!DOCTYPE policyconfig PUBLIC "-//freedesktop//DTD PolicyKit Policy Configuration 1.0//EN"\n'
    ' "http://www.freedesktop.org/standards/PolicyKit/1.0/policyconfig.dtd">\n'
    "<policyconfig>\n  <vendor>Project Atomic (zincati-py test bed copy)</vendor>\n"
    + "".join(
        f'  <action id="org.projectatomic.rpmostree1.{a}">\n'
        f"    <description>rpm-ostree {a}</description>\n"
        f"    <message>Authentication is required for rpm-ostree {a}</message>\n"
        "    <defaults><allow_any>auth_admin</allow_any><allow_inactive>auth_admin"
        "</allow_inactive><allow_active>auth_admin_keep</allow_active></defaults>\n"
        "  </action>\n"
        for a in _RPMOSTREE_ACTIONS
    )
    + "</policyconfig>\n"
)

_OSTREE_WRAPPER = f"""\
#!/bin/sh
# zincati-py test bed: the ostree stand-in (testbed/ostree.py) on the rpm-ostree double's state.
TESTBED_RPMOSTREE_SCRIPT={SCRIPT_PATH} exec /usr/bin/python3 -m testbed.ostree "$@"
"""

# ostree's ostree-finalize-staged.path and .service (src/boot/), as shipped.
_FINALIZE_PATH = """\
[Unit]
Description=OSTree Monitor Staged Deployment
DefaultDependencies=no
ConditionPathExists=/run/ostree-booted

[Path]
PathExists=/run/ostree/staged-deployment

[Install]
WantedBy=multi-user.target
"""
_FINALIZE_SERVICE = """\
[Unit]
Description=OSTree Finalize Staged Deployment (zincati-py test bed stand-in)
ConditionPathExists=/run/ostree-booted
DefaultDependencies=no
After=local-fs.target
Before=basic.target final.target
Conflicts=final.target
Before=systemd-journal-flush.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/usr/bin/ostree admin finalize-staged
TimeoutStopSec=5m
"""


# ostree-prepare-root (in the initramfs) creates /run/ostree-booted before systemd starts; here
# a unit does it first thing, before the units conditioned on it are started.
_BOOTED_MARKER = """\
[Unit]
Description=Mark this boot as an ostree boot (zincati-py test bed: ostree-prepare-root's part)
DefaultDependencies=no
Before=sysinit.target ostree-finalize-staged.path zincati-py-finalize.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/touch /run/ostree-booted
# The bootloader's part: the default deployment boots (an rpm-ostree rollback's target).
ExecStart=/usr/bin/ostree admin boot-default
"""


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def install_standins(root: Path, wheelhouse: Path, script: Mapping[str, Any]) -> None:
    pip_install(root, wheelhouse, ["zincati-py-testbed"])
    unitdir = root / "usr/lib/systemd/system"
    _write(unitdir / "rpm-ostreed.service", _RPMOSTREED_UNIT)
    _write(
        root / "usr/share/dbus-1/system-services/org.projectatomic.rpmostree1.service",
        _RPMOSTREED_ACTIVATION,
    )
    _write(root / "usr/share/dbus-1/system.d/org.projectatomic.rpmostree1.conf", _RPMOSTREED_POLICY)
    _write(
        root / "usr/share/polkit-1/actions/org.projectatomic.rpmostree1.policy", _RPMOSTREE_POLKIT
    )
    _write(root / "usr/bin/ostree", _OSTREE_WRAPPER, 0o755)
    _write(unitdir / "ostree-finalize-staged.path", _FINALIZE_PATH)
    _write(unitdir / "ostree-finalize-staged.service", _FINALIZE_SERVICE)
    _write(unitdir / "ostree-booted.service", _BOOTED_MARKER)
    wants = root / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "ostree-booted.service").symlink_to("/usr/lib/systemd/system/ostree-booted.service")
    _write(root / SCRIPT_PATH.lstrip("/"), json.dumps(dict(script), indent=1, sort_keys=True))


def enable_units(root: Path, enable: Iterable[str]) -> None:
    """``%post``'s ``systemctl preset`` under Fedora's policy: the image's preset enables
    ``enable``, Fedora's ``99-default-disable.preset`` disables everything else of ours."""
    presets = root / "usr/lib/systemd/system-preset"
    units = ["zincati-py.service", "zincati-py-fleetlock.service", "ostree-finalize-staged.path"]
    _write(presets / "40-zincati-py-testbed.preset", "".join(f"enable {u}\n" for u in enable))
    _write(presets / "99-default-disable.preset", "disable *\n")
    subprocess.run(
        ["systemctl", f"--root={root}", "preset", *units],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def write_fragments(root: Path, fragments: Mapping[str, str]) -> None:
    """Admin config fragments in ``/etc/zincati/config.d``."""
    for name, text in fragments.items():
        _write(root / "etc/zincati/config.d" / name, text)


def set_machine_id(root: Path) -> str:
    machine_id = uuid.uuid4().hex
    _write(root / "etc/machine-id", machine_id + "\n", 0o444)
    return machine_id
