"""Resuming a run directory: which config changes its checkpointed state survives."""

from __future__ import annotations

from typing import Any

from gptjax.config import EXECUTION_FIELDS, TrainConfig, config_changes
from gptjax.store.rundir import RunDir

# A resumed run refuses these: they change what the checkpointed parameters and optimizer state
# mean, even where shapes happen to agree (a residual layout, an activation, the vocabulary).
# Everything else (steps, schedule lengths, cadences, eval batch size, mesh, data paths, model
# EXECUTION_FIELDS) may change and is recorded. Changes of the state's tree or shapes by other
# fields (grad_clip on/off, Adafactor's factoring) are caught by comparing the abstract states.
STATE_SECTIONS = ("model",)
STATE_FIELDS = ("optim.name", "data.tokenizer", "init_from")


def alters_state(field: str) -> bool:
    """Whether changing `field` invalidates a run's checkpointed state."""
    if field.startswith("finetune.lora"):
        return True  # the adapters are the state
    section, _, name = field.partition(".")
    if section in STATE_SECTIONS:
        return name not in EXECUTION_FIELDS
    return field in STATE_FIELDS


def check(rd: RunDir, cfg: TrainConfig) -> list[tuple[str, Any, Any]]:
    """The changes from the config the run was started with; raises, before anything is
    written, when one of them would make the checkpointed state invalid."""
    rd.check_usable()
    if not rd.has_config():
        return []
    old = rd.read_config()
    changes = config_changes(old, cfg)
    if not changes or not rd.has_checkpoints():
        return changes  # no state yet: any config may (re)start it
    refused = [c for c in changes if alters_state(c[0])]
    from gptjax.training import trainer  # JAX: launchers call this too, and import no JAX up front

    if not refused and trainer.state_layout(old) != trainer.state_layout(cfg):
        # Same fields of the model and optimizer kind, different tree: e.g. grad_clip on/off.
        refused = [c for c in changes if c[0].startswith("optim.")]
    if refused:
        rd.refuse(refused, "its checkpointed state (parameters and optimizer state)")
    if old.resolved_seq_len != cfg.resolved_seq_len:
        rd.refuse([("data.seq_len", old.resolved_seq_len, cfg.resolved_seq_len)],
                  "the examples its data position counts (another length re-cuts every example)")
    return changes
