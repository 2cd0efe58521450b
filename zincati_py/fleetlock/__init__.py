"""FleetLock: the reboot-slot protocol Zincati speaks, our client for it, and our server.

``protocol`` holds the wire types both sides share; ``client`` is the low-level async client
(one attempt per call); ``server`` is ``zincati-py fleetlock serve`` with pluggable
``backends`` (SQLite embedded, etcd v3 for HA).
"""
