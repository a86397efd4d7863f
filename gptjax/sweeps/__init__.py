"""Scaling sweeps and the laws fitted to them.

spec        sweep files: grid, zip, random and IsoFLOP runs over a base config
runner      runs a sweep's runs (resuming, retrying, refusing stale ones) locally or on a launcher
plan        `gptjax sweep plan`: every run's mesh, compiled memory, fit and cost on a target
fit         scaling-law fits with diagnostics and warnings (power law, Chinchilla's approaches)
report      results.csv, fitted laws, ablation statistics and plots
webpage     report.html: the warnings and interactive plots on one self-contained page
evaluation  `gptjax sweep eval`: held-out sets and tasks on every finished run
search      Optuna search over a sweep file's search section
mup         μP coordinate checks
commands    `gptjax sweep ...`
"""
