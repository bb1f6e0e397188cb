"""``python -m pcm_hil.cli``: the same as the ``pcm-hil`` command."""
import sys

from . import main

sys.exit(main())
