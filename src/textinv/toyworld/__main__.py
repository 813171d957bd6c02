"""python -m textinv.toyworld: the same as `python -m textinv toyworld`."""

import sys

from textinv.toyworld.cli import main

sys.exit(main())
