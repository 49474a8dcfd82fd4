"""``python -m jaxplain`` runs the command line."""

import sys

from jaxplain.cli import main

sys.exit(main())
