"""A stand-in for the one ``ostree`` command the agent runs, acting on the double's ``--root``.

``python -m testbed.ostree admin lock-finalization [--unlock] [--sysroot=ROOT]``
behaves like ostree's builtin (ostree ≥ 2023.8): it needs a staged deployment, is idempotent,
prints the same messages, and changes the state the same way rpm-ostree observes it — the
presence of ``run/ostree/staged-deployment-locked``. Real ostree keeps ``/run/ostree`` at the
absolute path whatever ``--sysroot`` says; here it lives under ROOT so several sandboxed nodes
can share a machine.

``python -m testbed.ostree admin finalize-staged [--sysroot=ROOT] [--script=FILE]`` is what
``ostree-finalize-staged.service`` runs when the system goes down (the real-host tier,
:mod:`testbed.realhost`): an unlocked staged deployment becomes the default one (booted next),
a finalization-locked one is discarded. It needs the rpm-ostree double's script (``--script``
or ``$TESTBED_RPMOSTREE_SCRIPT``) for the booted deployment of a sysroot the double never saw.

``python -m testbed.ostree admin boot-default [--sysroot=ROOT] [--script=FILE]`` is the
bootloader's part at boot (not an ostree command): with nothing staged, the default deployment
boots, so an ``rpm-ostree rollback`` takes effect on the next boot as with a real bootloader.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from testbed.rpmostree import LOCK_REL, STAGED_REL, Script, Sysroot

SCRIPT_ENV = "TESTBED_RPMOSTREE_SCRIPT"


def lock_finalization(root: Path, unlock: bool) -> tuple[int, str]:
    if not (root / STAGED_REL).exists():
        return 1, "error: No staged deployment"
    lock = root / LOCK_REL
    if unlock:
        if not lock.exists():
            return 0, "Staged deployment is already prepared for finalization"
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        return 0, "Staged deployment is now queued to apply on shutdown"
    if lock.exists():
        return 0, "Staged deployment is already finalization locked"
    lock.touch()
    return 0, "Staged deployment is now finalization locked"


def finalize_staged(root: Path, script: Path) -> tuple[int, str]:
    sysroot = Sysroot(root, Script.load(script))
    staged = sysroot.staged()
    if staged is None:
        return 0, "No staged deployment"
    locked = sysroot.lock_file.exists()
    booted = sysroot.reboot()
    if locked:
        return 0, f"Not finalizing; found {LOCK_REL}: discarded {staged['version']}"
    return 0, f"Finalized {booted['version']} ({booted['checksum']}.{booted['serial']})"


def boot_default(root: Path, script: Path) -> tuple[int, str]:
    """What the bootloader does at boot: the default deployment boots (after an rpm-ostree
    rollback, the previous one)."""
    booted = Sysroot(root, Script.load(script)).boot_default()
    if booted is None:
        return 0, "Booted the default deployment (unchanged)"
    return 0, f"Booted the default deployment {booted['version']} ({booted['checksum']})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ostree")
    sub = p.add_subparsers(dest="group", required=True)
    admin = sub.add_parser("admin").add_subparsers(dest="command", required=True)
    lf = admin.add_parser("lock-finalization")
    lf.add_argument("--unlock", action="store_true")
    lf.add_argument("--sysroot", type=Path, default=Path("/"))
    fs = admin.add_parser("finalize-staged")
    fs.add_argument("--sysroot", type=Path, default=Path("/"))
    fs.add_argument("--script", type=Path, default=os.environ.get(SCRIPT_ENV))
    bd = admin.add_parser("boot-default")
    bd.add_argument("--sysroot", type=Path, default=Path("/"))
    bd.add_argument("--script", type=Path, default=os.environ.get(SCRIPT_ENV))
    args = p.parse_args(argv)
    if args.command == "boot-default":
        if args.script is None:
            p.error(f"boot-default needs --script or ${SCRIPT_ENV}")
        code, message = boot_default(args.sysroot, args.script)
    elif args.command == "finalize-staged":
        if args.script is None:
            p.error(f"finalize-staged needs --script or ${SCRIPT_ENV}")
        code, message = finalize_staged(args.sysroot, args.script)
    else:
        code, message = lock_finalization(args.sysroot, args.unlock)
    print(message, file=sys.stderr if code else sys.stdout)
    return code


if __name__ == "__main__":
    sys.exit(main())
