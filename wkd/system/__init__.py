"""The OS edge and the composition root: the daemon, systemd, udev, the generator."""
