"""Commands for measuring and checking, run by users on their own machines.

bench        step time, MFU and data-loader speed of a config (and beside PyTorch)
bench_torch  the PyTorch side of `gptjax bench --vs-torch`
plan         per-device memory of the compiled train step on a mesh or TPU topology, before submitting
chaos        the fault-injection harness behind `gptjax chaos`
commands     `gptjax params`, `plan`, `bench` and `chaos`
"""
