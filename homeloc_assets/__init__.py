"""homeloc: home-country inference from postgresql-hll userday aggregates.

The core packages (``hll``, ``geo``, ``inputs``, ``inference``) know no Dagster;
``definitions`` wires them into Dagster assets and ``cli`` is the command line.
"""

__version__ = "0.1.0"
