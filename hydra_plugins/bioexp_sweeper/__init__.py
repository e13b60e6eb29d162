"""Hydra only instantiates sweepers from the ``hydra_plugins`` namespace: this is bioexp's entry in it."""
