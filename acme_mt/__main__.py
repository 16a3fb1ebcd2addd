"""``python -m acme_mt`` runs the same command line as ``acme-mt``."""

import sys

from acme_mt.cli import main

sys.exit(main())
