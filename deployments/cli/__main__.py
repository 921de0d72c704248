"""python -m labpipe.deployments.cli (what `labpipe` runs)."""

from labpipe.deployments.cli import main

main()
