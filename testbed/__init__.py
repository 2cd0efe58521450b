"""Real-component harnesses shared by the tests and ``zincati-py demo``.

Everything here starts real programs (dbus-daemon, systemd, python-dbusmock) on private
sockets and tears them down by PID; nothing here is imported by production code paths.
"""
