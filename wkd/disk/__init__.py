"""The local disk: libcryptsetup (luks2), trusted header reads (headers), sysfs and /proc
(devices), the crash-atomic Format (formatter), the state directory (state), and `LocalDisk`
(port), which puts them behind the engine's DiskPort. Blocking; the engine calls it from
worker threads. Never imports the engine, the HSM backends or D-Bus."""
