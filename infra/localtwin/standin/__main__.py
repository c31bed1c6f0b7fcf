"""``python -m infra.localtwin.standin [ENV]``: build (or reuse) the stand-in image of ENV's settings."""

import sys

from infra.localtwin.standin import main

sys.exit(main())
