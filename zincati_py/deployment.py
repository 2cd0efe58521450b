"""The one deployment type: an OS deployment as rpm-ostree reports it.

The rpm-ostree adapter (:mod:`zincati_py.dbus.rpmostree`) builds it from ``Sysroot.Deployments``
with every field; the state machine (:mod:`zincati_py.agent.machine`) judges by ``checksum``
and ``version`` only, and its tests build one from those two. Plain data, no imports: the
pure machine and the adapter share it without depending on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Deployment:
    checksum: str
    version: str | None = None  # None: the commit carries no version
    booted: bool = False
    staged: bool = False
    finalization_locked: bool = False
    id: str = ""
    osname: str = ""
    origin: str = ""
    timestamp: int = 0
    serial: int = 0
    # For the Cincinnati graph request: the base commit (before local layering), its
    # ``fedora-coreos.stream`` commit metadata and, for an OCI deployment, its image.
    base_checksum: str = ""
    stream: str = ""
    container_image_reference: str = ""
    container_image_reference_digest: str = ""

    @property
    def label(self) -> str:
        short = self.checksum[:12]
        return f"{self.version} ({short})" if self.version else short

    @property
    def identity(self) -> tuple[str, str | None]:
        """What makes two reports the same deployment (flags and serials aside)."""
        return (self.checksum, self.version)

    def brief(self) -> dict[str, Any]:
        """``{checksum, version}``, as the status document shows it."""
        return {"checksum": self.checksum, "version": self.version}
