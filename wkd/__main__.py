"""python3 -m wkd runs the daemon."""

import sys

from wkd.system.daemon import main

sys.exit(main())
