"""``python -m workshop_utils``: the workshop's command line (see ``workshop_utils.cli``)."""
import sys

from .cli import main

sys.exit(main())
