"""zincati-py: a systemd-native update and reboot-coordination agent."""

__version__ = "0.1.0"
