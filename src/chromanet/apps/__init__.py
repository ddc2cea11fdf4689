"""Applications built on the engine: the ``chromanet`` command (``cli``), the
palette archive node behind ``chromanet serve`` (``node``) and the load tool
behind ``chromanet bench`` (``loadtool``).

They sit on top of every layer: they use the public API (``chromanet.AE``…),
the archive and the status vocabulary, and nothing below the API layer.
"""
