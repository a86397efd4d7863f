"""Scaling sweeps: specs, runner, scaling-law fits (fit.py) and reports."""
