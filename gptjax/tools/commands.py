"""`gptjax params`, `plan`, `bench` and `chaos`."""

from __future__ import annotations

import sys

from gptjax.runtime import flags


def _params(args) -> int:
    from gptjax.model import counting

    print(counting.format_table(args.presets))
    return 0


def _plan(args) -> int:
    import json
    import os

    from gptjax.config import ConfigError
    from gptjax.config_files import load_train_config

    sizes = mesh_sizes(args.mesh or "data=1")  # one slice's
    if args.slices < 1:
        raise ConfigError(f"--slices {args.slices}: give a number of slices >= 1")
    if args.slices > 1 and not args.topology:
        raise ConfigError("--slices needs --topology (the slice type, such as v5e:2x4): multi-slice plans "
                          "compile for TPU slices")
    n = sizes["data"] * sizes["fsdp"] * sizes["tensor"] * args.slices

    def config(sizes):
        overrides = [*args.overrides, *(f"mesh.{k}={v}" for k, v in sizes.items()), f"mesh.dcn_data={args.slices}"]
        if args.batch is not None:
            overrides.append(f"data.batch_size={args.batch}")
        return load_train_config(args.config, overrides)

    cfg = config(sizes)  # bad input fails before jax starts
    if not args.topology:
        # Fake CPU devices of the mesh's size: read when jax creates its CPU client, which nothing
        # before this point has done.
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
    import jax

    jax.config.update("jax_platforms", "cpu")  # a TPU topology compiles from here too
    from gptjax.tools import plan

    devices = None
    if args.topology:
        devices = plan.tpu_devices(args.topology, args.slices)
        chips = len(devices) // args.slices
        if args.mesh is None:  # all chips data-parallel
            n = len(devices)
            cfg = config({"data": chips, "fsdp": 1, "tensor": 1})
        if n != len(devices):
            raise ConfigError(f"--mesh {args.mesh} spans {n // args.slices} devices but topology {args.topology} has "
                              f"{chips} chips; give a mesh of {chips}")
    elif jax.device_count() != n:
        raise ConfigError(f"--mesh needs {n} devices but jax started with {jax.device_count()}; run `gptjax plan` "
                          "in a fresh process")
    result = plan.make_plan(cfg, args.accelerator, devices=devices, topology=args.topology)  # slices: cfg.mesh
    print(plan.format_plan(result))
    if args.output:
        from gptjax.store import paths

        paths.write_text(args.output, json.dumps(result.to_dict(), indent=1))
    return 0 if result.fits is not False else 1


def _bench(args) -> int:
    import json

    from gptjax.config_files import load_train_config
    from gptjax.store import paths
    from gptjax.tools import bench

    cfg = load_train_config(args.config, args.overrides)
    sections = tuple(filter(None, args.sections.split(","))) if args.sections else bench.SECTIONS
    opts = bench.BenchOptions(
        sections=sections, repeats=args.repeats, steps=args.steps,
        warmup=args.warmup, depths=tuple(args.depths), prompt=args.prompt, new_tokens=args.new_tokens,
        gen_batch=tuple(args.gen_batch), data_batches=args.data_batches, vs_torch=args.vs_torch or bool(args.nanogpt),
        nanogpt=args.nanogpt, torch_threads=args.torch_threads)  # bad options fail before anything compiles
    result = bench.run(cfg, opts, say=lambda line: print(line, file=sys.stderr))
    print(bench.format_result(result))
    if args.output:
        paths.write_text(args.output, json.dumps(result, indent=1))
    return 0


def mesh_sizes(text: str) -> dict[str, int]:
    from gptjax.config import ConfigError

    sizes = {"data": 1, "fsdp": 1, "tensor": 1}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if name not in sizes or not value.isdigit() or int(value) < 1:
            raise ConfigError(f"--mesh {text!r}: expected comma-separated data=N, fsdp=N, tensor=N with N >= 1, "
                              f"got {part!r}")
        sizes[name] = int(value)
    return sizes


def _chaos(args) -> int:
    from gptjax.tools import chaos

    return chaos.main(args.workdir, long=args.long, kills=args.kills, terms=args.terms, seed=args.seed)


def add_parser(sub) -> None:
    """This subpackage's commands, added to the `gptjax` command line (cli.py assembles them)."""
    s = sub.add_parser("params", help="parameter counts and training FLOPs/token of presets")
    s.add_argument("presets", nargs="*", help="preset names (default: all)")
    s.set_defaults(func=_params)

    s = sub.add_parser("plan", help="compile the sharded train step ahead of time on fake devices of a mesh and "
                       "report per-device memory, and whether it fits an accelerator")
    s.add_argument("config", help="a YAML file or a preset name")
    s.add_argument("overrides", nargs="*", help="section.field=value, e.g. model.remat=full data.seq_len=2048")
    s.add_argument("--mesh", help="data=N,fsdp=N,tensor=N (missing axes are 1; default data=1, or data=CHIPS "
                   "with --topology)")
    s.add_argument("--slices", type=int, default=1, help="with --topology: that many slices joined over the "
                   "data-centre network (multi-slice; the mesh is one slice's, data parallel across slices: "
                   "mesh.dcn_data)")
    s.add_argument("--topology", help="compile for a TPU slice such as v5e:2x4, v5p:2x2x1, v6e:2x2 with the TPU "
                   "compiler (needs libtpu; runs on a CPU machine) instead of fake CPU devices")
    s.add_argument("--batch", type=int, help="global batch size (data.batch_size)")
    s.add_argument("--accelerator", help="check the plan against its memory: h100, h200, b200, a100-40gb, "
                   "a100-80gb, l40s, l4, a10g, v100-32gb, tpu-v4, tpu-v5e, tpu-v5p, tpu-v6e")
    s.add_argument("--output", help="also write the plan as JSON here")
    s.set_defaults(func=_plan)

    s = sub.add_parser("bench", help="train-step time, tokens/s and MFU, compile times, memory, generation and "
                       "data-loader speed of a config; --vs-torch runs the same model in PyTorch alongside")
    s.add_argument("config", help="a YAML file or a preset name")
    s.add_argument("overrides", nargs="*", help="section.field=value, e.g. data.batch_size=8")
    s.add_argument("--sections", help="comma-separated subset of train,compile,memory,generate,data (default: all)")
    s.add_argument("--repeats", type=int, default=5, help="timed blocks per measurement (the median is reported)")
    s.add_argument("--steps", type=int, default=10, help="train steps per timed block")
    s.add_argument("--warmup", type=int, default=3, help="untimed train steps first")
    s.add_argument("--depths", type=int, nargs="+", default=[], help="compile-time depths (default: the "
                   "config's and 4x it)")
    s.add_argument("--prompt", type=int, default=32, help="generation: prompt tokens")
    s.add_argument("--new-tokens", type=int, default=32, help="generation: new tokens")
    s.add_argument("--gen-batch", type=int, nargs="+", default=[1, 8], help="generation batch sizes")
    s.add_argument("--data-batches", type=int, default=200, help="batches per data-loader measurement")
    s.add_argument("--vs-torch", action="store_true", help="also time the same model and optimizer in PyTorch "
                   "(transformers' class for the config), interleaved with gptjax")
    s.add_argument("--nanogpt", help="a nanoGPT checkout: its model.py is the PyTorch side (implies --vs-torch)")
    s.add_argument("--torch-threads", type=int, help="PyTorch threads (default: every core, as XLA:CPU uses)")
    s.add_argument("--output", help="also write the results as JSON here")
    flags.add_xla_profile(s)
    s.set_defaults(func=_bench)

    s = sub.add_parser("chaos", help="fault injection: break a small job at random points, resume, check nothing was lost")
    s.add_argument("--workdir", default="runs/chaos", help="where the runs go (default: runs/chaos)")
    s.add_argument("--long", action="store_true", help="add --kills random SIGKILLs and --terms random SIGTERMs")
    s.add_argument("--kills", type=int, default=20, help="--long: random SIGKILLs")
    s.add_argument("--terms", type=int, default=10, help="--long: random SIGTERMs")
    s.add_argument("--seed", type=int, default=0, help="--long: seed of the random moments")
    s.set_defaults(func=_chaos)
