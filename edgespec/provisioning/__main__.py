"""`python -m edgespec.provisioning flash ...`: the provisioning commands on their own."""

import sys

from . import main

sys.exit(main())
