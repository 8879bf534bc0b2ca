"""Optuna sweeps over the method's parameters (sensitivity grids and search)."""
