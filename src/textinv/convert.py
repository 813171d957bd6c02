"""python -m textinv.convert: kept for the commands people already use; the same as `python -m textinv convert`."""

import sys

from textinv.methods.convert import main

if __name__ == "__main__":
    sys.exit(main())
