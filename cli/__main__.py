"""python -m labpipe.cli (what `labpipe` runs)."""

from labpipe.cli import main

main()
