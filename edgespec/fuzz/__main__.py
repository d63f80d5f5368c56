"""`python -m edgespec.fuzz`: the same as `edgespec fuzz`."""

import sys

from .cli import main

sys.exit(main())
