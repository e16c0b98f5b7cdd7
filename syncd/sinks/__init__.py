"""Event sinks: one module per backend, found through the ``syncd.sinks`` entry points."""
