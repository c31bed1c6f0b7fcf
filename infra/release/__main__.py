"""``python -m infra.release PATH``: verify a Nextcloud release archive or tree."""

import sys

from infra.release.cli import main

sys.exit(main())
