"""Training: state and pure steps, optimisers, the loop and what it needs.

optim       Optax optimisers and schedules from OptimConfig (μP scaling included)
trainer     the sharded train state, the Objective hooks (LanguageModel) and the one jitted train step
warm_start  init_from: parameters from Hugging Face, a native directory or another run
resume      which config changes a run directory's checkpointed state survives
fault_hooks the failures a run injects into itself for `gptjax chaos` (FaultConfig)
signals     preemption: SIGTERM/SIGINT set a flag; the loop saves and exits cleanly
watchdog    a hang (no step within its deadline) becomes exit code 3, which the launchers restart
heldout     the evaluations run during training (val split, eval.sets, eval.tasks)
tracking    progress lines, the start-up summary, optional Weights & Biases
profiling   jax.profiler traces of chosen steps and a summary of where their time went
loop        train_run for every Job: resume, and the cadence of logging, eval, checkpoints and signals
commands    `gptjax train` and `gptjax data prepare`
"""
