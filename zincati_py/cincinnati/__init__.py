"""Update discovery from a Cincinnati update graph, as Zincati does it on Fedora CoreOS.

Used when ``[cincinnati] base_url`` is configured; without it the agent keeps updating from
the deployment's origin. The pure parts (URL templating, query, graph parsing, planning) need
no I/O and are tested in the fast tier; :mod:`.client` fetches over HTTP (httpx, imported on
first use), :mod:`.check` is what the agent's update check calls.

- :mod:`.errors`: ``CincinnatiError`` with Zincati's machine-friendly ``kind``.
- :mod:`.request`: ``base_url`` templating, the ``v1/graph`` URL and the query parameters.
- :mod:`.graph`: graph parsing, the booted node, targets, deny-list, downgrade rule, dead-end.
- :mod:`.motd`: the dead-end MOTD file.
- :mod:`.metrics`: Zincati's ``zincati_cincinnati_*`` metrics (a prometheus collector).
- :mod:`.client`: ``fetch_graph`` over HTTP.
- :mod:`.check`: one update check as the agent runs it (fetch, plan, MOTD, metrics).
"""
