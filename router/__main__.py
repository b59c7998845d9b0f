"""`python -m pyweave.router`: run the router daemon in the foreground."""

import sys

from pyweave.router.daemon import main

sys.exit(main())
