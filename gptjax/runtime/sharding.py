"""The only module that names mesh axes: the device mesh and the logical -> mesh axis rules.

Axis types are Auto (GSPMD propagation): the model code carries logical names only and never
spells out per-op output shardings, which Explicit axes (jax.make_mesh's default) would demand.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gptjax.config import ConfigError, MeshConfig

log = logging.getLogger(__name__)

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the batch is split over both data-parallel axes

# Logical parameter axis -> mesh axis. FSDP shards the model width, tensor parallelism splits
# heads, MLP and vocabulary (Megatron-style); everything else is replicated.
RULES: dict[str, str | None] = {
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "layers": None,
    "position": None,
    "lora": None,  # a LoRA adapter's rank: small, replicated
}


def resolve_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) sizes within one slice of `n_devices / cfg.dcn_data` devices."""
    if n_devices % cfg.dcn_data:
        raise ConfigError(f"mesh.dcn_data = {cfg.dcn_data} slices do not divide the {n_devices} devices")
    n_devices //= cfg.dcn_data
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = math.prod(s for s in sizes if s != -1)
    where = f" per slice ({cfg.dcn_data} slices)" if cfg.dcn_data > 1 else ""
    if -1 in sizes:
        if n_devices % known:
            raise ConfigError(f"mesh {dict(zip(AXES, sizes))}: {n_devices} devices{where} are not divisible by {known}")
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ConfigError(f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
                          f"but {n_devices} are available{where}; set one axis to -1 to use the rest")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh; with mesh.dcn_data slices, `data` spans the slices too
    (slice-major), so the only traffic between slices is the data-parallel gradient reduction."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_shape(cfg, len(devices))
    types = (AxisType.Auto,) * 3
    if cfg.dcn_data > 1:
        return Mesh(_slice_major(devices, shape, cfg.dcn_data), AXES, axis_types=types)
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, AXES, axis_types=types)
    return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=types)


def _slice_major(devices: list, shape: tuple[int, int, int], slices: int) -> np.ndarray:
    """Devices [slices * data, fsdp, tensor]: each slice's devices laid out by jax's hybrid mesh
    (TPU slices known by their slice_index); devices without one (CPU, GPU hosts) are taken in
    order, each group of len/slices standing for a slice."""
    from jax.experimental import mesh_utils

    if all(hasattr(d, "slice_index") for d in devices):
        found = len({d.slice_index for d in devices})
        if found != slices:
            raise ConfigError(f"mesh.dcn_data = {slices}, but the devices belong to {found} slice(s)")
        return mesh_utils.create_hybrid_device_mesh(shape, (slices, 1, 1), devices)
    groups = np.asarray(devices).reshape(slices, *shape)
    return groups.reshape(slices * shape[0], shape[1], shape[2])


def one_device_mesh(cfg: MeshConfig) -> Mesh:
    """`cfg`'s mesh (its axis kinds) on this process's first device: inspection and evaluation."""
    return make_mesh(dataclasses.replace(cfg, data=1, fsdp=1, tensor=1, dcn_data=1), jax.devices()[:1])


def abstract(shapes, shardings):
    """ShapeDtypeStructs of `shapes` placed by `shardings` (the same tree): the target of a sharded
    initialisation or restore."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)


def device(mesh: Mesh) -> jax.Device:
    """A device of the mesh: what kernels are chosen for (a TPU topology's, in a plan made on a
    CPU machine)."""
    return mesh.devices.flat[0]


def platform(mesh: Mesh) -> str:
    return device(mesh).platform


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (dimension 0) over the data-parallel axes, the rest replicated: an array of any rank
    (token rows, supervised rows' fields, a task's [B, V, T] views and [B] labels)."""
    return NamedSharding(mesh, PartitionSpec(BATCH))


def micro_batches(rows_AxB: jax.Array, mesh: Mesh) -> jax.Array:
    """Keep each micro-batch split over the data-parallel axes after the accumulation reshape."""
    return jax.lax.with_sharding_constraint(rows_AxB, NamedSharding(mesh, PartitionSpec(None, BATCH)))


# Logical activation axis (model.kernels.ACTIVATION_AXES) -> mesh axes: the residual stream's
# batch over the data-parallel axes, the rest replicated (Megatron's layout). An embedding table
# gathered for its lookup keeps only its rows' own split ("vocab" over tensor, as in RULES).
ACTIVATION_RULES: dict[str, tuple[str, ...] | None] = {"batch": BATCH, "length": None, "act_embed": None,
                                                       "vocab": ("tensor",), "position": None}


@dataclasses.dataclass(frozen=True)
class Activations:
    """Places activations named by logical axes on `mesh`: given to the model as its kernels'
    `place`. Without it GSPMD may follow the parameters instead: with FSDP (width over `fsdp`) it
    kept whole-batch activations on every device (gpt2 at batch 16 on 8 devices: 42.9 GiB of
    temporaries per device against 6.4 GiB with the batch split, from `gptjax plan`)."""

    mesh: Mesh

    def __call__(self, x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
        if self.mesh.size == 1:
            return x
        spec = []
        for logical, size in zip(axes, x.shape):
            mesh_axes = ACTIVATION_RULES[logical] if logical is not None else None
            # As for parameters, a dimension the mesh does not divide (a one-row sample) is replicated.
            fits = mesh_axes is not None and size % math.prod(self.mesh.shape[a] for a in mesh_axes) == 0
            spec.append(mesh_axes if fits else None)
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, PartitionSpec(*spec)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def per_device(mesh: Mesh) -> NamedSharding:
    """One element per device of the mesh: a reduction over it reaches every process, whatever
    the batch layout (the stop flag travels this way)."""
    return NamedSharding(mesh, PartitionSpec(AXES))


def local_rows(sh: NamedSharding, n_rows: int) -> np.ndarray:
    """The rows (dimension 0) of a global array of `n_rows` that this process's devices hold,
    sorted. Where the batch axes do not span every process (say tensor parallelism across hosts),
    several processes hold the same rows and each must supply them."""
    shape = (n_rows,) + (1,) * (len(sh.spec) - 1) if len(sh.spec) else (n_rows,)
    rows: set[int] = set()
    for index in sh.addressable_devices_indices_map(shape).values():
        rows.update(range(*index[0].indices(n_rows)))
    return np.asarray(sorted(rows), np.int64)


def global_array(local: np.ndarray, rows: np.ndarray, sh: NamedSharding, n_rows: int) -> jax.Array:
    """The global array whose rows `rows` (from local_rows) this process holds as `local`."""
    if jax.process_count() == 1 and len(rows) == n_rows:
        return jax.device_put(local, sh)
    position = {int(r): i for i, r in enumerate(rows)}

    def shard(index):
        picked = [position[r] for r in range(*index[0].indices(n_rows))]
        return local[picked][(slice(None),) + tuple(index[1:])]

    return jax.make_array_from_callback((n_rows,) + local.shape[1:], sh, shard)


_noticed: set[tuple] = set()


def spec_for(axes: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh, name: str = "") -> PartitionSpec:
    """PartitionSpec from logical axes; a dimension its mesh axis does not divide is replicated,
    and so is a vector (per layer) along `fsdp`: FSDP splits matrices only. Norm scales and biases
    across the width are tiny, and split they cost an all-gather in every layer, forward and back."""
    spec, used = [], set()
    vector = sum(logical != "layers" for logical in axes) == 1
    for logical, size in zip(axes, shape):
        axis = RULES.get(logical)
        if axis is None or mesh.shape[axis] == 1 or axis in used or (vector and axis == "fsdp"):
            spec.append(None)
            continue
        if size % mesh.shape[axis]:
            key = (name, logical, size, axis, mesh.shape[axis])
            if key not in _noticed:
                _noticed.add(key)
                log.warning("%s: %s=%d does not divide mesh axis %s=%d; replicated along it",
                            name or "parameter", logical, size, axis, mesh.shape[axis])
            spec.append(None)
            continue
        spec.append(axis)
        used.add(axis)
    return PartitionSpec(*spec)


def logical_axes(model_or_state) -> dict:
    """Pure dict (the layout of `nnx.to_pure_dict`) of PartitionSpecs of logical axis names."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state, nnx.Param)
    out: dict = {}
    for path, var in nnx.to_flat_state(state):
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = PartitionSpec(*var.get_metadata()["axes"])
    return out


def param_shardings(axes: dict, shapes: dict, mesh: Mesh) -> dict:
    """NamedShardings for a pure dict of parameters from their logical axes."""

    def one(path, logical, shape):
        name = ".".join(str(getattr(p, "key", p)) for p in path)
        return NamedSharding(mesh, spec_for(tuple(logical), tuple(np.shape(shape)), mesh, name))

    return jax.tree_util.tree_map_with_path(one, axes, shapes)


def opt_state_shardings(tx, abstract_opt_state, param_shapes: dict, param_sh: dict, mesh: Mesh):
    """Optimizer state follows its parameter's sharding where it has the parameter's shape;
    counters and Adafactor's factored moments (other shapes) are replicated."""
    import optax

    def one(leaf, param, sh):
        return sh if tuple(leaf.shape) == tuple(param.shape) else replicated(mesh)

    return optax.tree_map_params(tx, one, abstract_opt_state, param_shapes, param_sh,
                                 transform_non_params=lambda _: replicated(mesh))


def check_batch(batch_size: int, mesh: Mesh, what: str = "data.batch_size") -> None:
    dp = data_parallel_size(mesh)
    if batch_size % dp:
        raise ConfigError(f"{what} = {batch_size} is not divisible by the data-parallel size {dp} "
                          f"(mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}); "
                          f"use a multiple of {dp}")


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (the largest shard)."""
    return sum(math.prod(a.sharding.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
               for a in jax.tree.leaves(tree))

