"""Pure torch networks: no Lightning, Hydra or dataset imports."""
