"""Metrics shared by tasks and evaluations that torchmetrics does not provide."""
