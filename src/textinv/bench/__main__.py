"""python -m textinv.bench: the same as `python -m textinv bench`."""

from textinv.bench.main import main

main()
