"""labpipe: a research lab's data lifecycles as Prefect flows.

This package (the ``lib/`` folder) is the domain: parsers, DataJoint schemas,
converters, solvers and stores. It never imports Prefect; ``labpipe.flows``
wires it into flows, ``labpipe.blocks`` holds the configuration users edit in
the Prefect UI and ``labpipe.deployments`` deploys and operates it all.
"""

__version__ = "0.1.0"
