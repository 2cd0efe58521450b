"""Health: pre-reboot checks, the post-boot health gate, automatic rollback, event hooks.

- ``spec``: what a configured check is (a unit name or a command line), pure and cheap: the
  configuration validator imports it.
- ``discover``: the executables in ``health.d/required.d`` and ``wanted.d`` (``/etc`` shadows
  ``/usr/lib`` by name, a symlink to ``/dev/null`` masks).
- ``run``: running checks without blocking the event loop (asyncio subprocesses, bounded).
- ``gate``: the pure decisions (is the boot healthy, still waiting, failed; what a persisted
  gate record means after a crash or a reboot).
- ``keeper``: the agent's collaborator tying them to rpm-ostree, systemd, logind and the
  strategy's steady-state report.
"""
