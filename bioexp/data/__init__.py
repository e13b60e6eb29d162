"""Datasets: one module per format (reader + LightningDataModule); ``synth/`` writes synthetic copies."""
