"""Where the model runs: devices, meshes and compiler settings.

sharding     the mesh and the only table that maps logical axes to mesh axes
splash       jax's Pallas TPU attention kernel per device under shard_map (attention_impl pallas)
xla          jit with the compiler options of the target devices, XLA flag profiles
distributed  multi-process start-up (jax.distributed), barriers, agreement across processes
hardware     accelerators' published peak FLOPs and memory per device (else measured once)
flags        command-line flags about the runtime, importable before jax starts
"""
