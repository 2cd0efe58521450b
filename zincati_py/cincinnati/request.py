"""What a graph request is: the templated ``base_url``, the ``v1/graph`` URL, the query.

Zincati's rules, kept exact:

- ``base_url`` is templated iff it contains ``${`` before its first ``}``; then ``${basearch}``,
  ``${group}``, ``${platform}`` and ``${stream}`` are substituted and any other ``${x}`` stays
  verbatim (the ``envsubst`` crate Zincati uses).
- The graph URL is ``base_url`` joined with ``v1/graph`` by RFC 3986 (so without a trailing
  slash the last path segment of ``base_url`` is replaced).
- Query: ``basearch``, ``os_version``, ``group``, ``node_uuid`` (32 lowercase hex),
  ``platform``, ``stream``, ``os_checksum``, ``rollout_wariness`` formatted ``%.6f`` only when
  configured, and ``oci=true`` for an OCI deployment (whose ``os_checksum`` is the digest
  pull-spec). Header ``accept: application/json``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from zincati_py.cincinnati.errors import CLIENT_BUILDER, CincinnatiError

GRAPH_PATH = "v1/graph"
HEADERS = {"accept": "application/json"}
URL_VARIABLES = ("basearch", "group", "platform", "stream")
_UUID_RE = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class NodeIdentity:
    """Everything about this node that goes into a graph request."""

    basearch: str
    stream: str
    platform: str
    group: str
    node_uuid: str
    os_version: str
    os_checksum: str  # the booted base checksum, or the digest pull-spec for OCI
    rollout_wariness: float | None = None
    oci: bool = False

    def url_variables(self) -> dict[str, str]:
        return {
            "basearch": self.basearch,
            "group": self.group,
            "platform": self.platform,
            "stream": self.stream,
        }


def is_templated(text: str) -> bool:
    """``${`` occurs before the first ``}`` (envsubst's ``is_templated``)."""
    start, end = text.find("${"), text.find("}")
    return start >= 0 and end >= 0 and start < end


def substitute(text: str, variables: dict[str, str]) -> str:
    """Replace ``${name}`` for each known name; unknown ``${x}`` stay verbatim.

    Like envsubst, names and values containing ``$``, ``{`` or ``}`` are refused (a value
    must not introduce a new template).
    """
    for name, value in variables.items():
        for what, text_ in (("name", name), ("value", value)):
            if any(c in text_ for c in "${}"):
                raise CincinnatiError(
                    CLIENT_BUILDER, f"template {what} {text_!r} contains '$', '{{' or '}}'"
                )
    for name, value in variables.items():
        text = text.replace("${" + name + "}", value)
    return text


def graph_url(base_url: str, variables: dict[str, str]) -> str:
    """``base_url`` (templated if it is a template) joined with ``v1/graph``."""
    base = substitute(base_url, variables) if is_templated(base_url) else base_url
    try:
        parts = urlsplit(base)
    except ValueError as exc:
        raise CincinnatiError(CLIENT_BUILDER, f"base_url {base!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CincinnatiError(CLIENT_BUILDER, f"base_url {base!r}: not an absolute http(s) URL")
    return urljoin(base, GRAPH_PATH)


def query(identity: NodeIdentity) -> dict[str, str]:
    """The query parameters, in Zincati's formats."""
    uuid = identity.node_uuid.replace("-", "").lower()
    if not _UUID_RE.fullmatch(uuid):
        raise CincinnatiError(
            CLIENT_BUILDER, f"node_uuid {identity.node_uuid!r}: not 32 hex digits"
        )
    params = {
        "basearch": identity.basearch,
        "os_version": identity.os_version,
        "group": identity.group,
        "node_uuid": uuid,
        "platform": identity.platform,
        "stream": identity.stream,
        "os_checksum": identity.os_checksum,
    }
    if identity.rollout_wariness is not None:
        params["rollout_wariness"] = f"{identity.rollout_wariness:.6f}"
    if identity.oci:
        params["oci"] = "true"
    return params
