"""LightningModules: objectives, metrics, optimisers. Tasks never read files."""
