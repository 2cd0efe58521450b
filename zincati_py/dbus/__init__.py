"""D-Bus adapters: one module per peer (rpm-ostree, logind, systemd); only they talk to it."""
