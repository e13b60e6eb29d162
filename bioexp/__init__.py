"""bioexp: config composes, Hydra instantiates, Lightning runs."""

__version__ = "0.1.0"
