"""Development tooling of wkd, not installed: the demo, a private system-like bus, a small
org.wkd1 client, and process helpers. `./dev demo`, the tests and the benchmarks import it
from the source tree (python -m devtools.demo)."""
