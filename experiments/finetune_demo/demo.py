"""Pretrain on Gutenberg, then fine-tune on TinyShakespeare fully and with LoRA (README numbers).

Usage: GPTJAX_DATA_DIR=... TIKTOKEN_CACHE_DIR=... python experiments/finetune_demo/demo.py OUT_DIR
Writes OUT_DIR/{pretrain,full,lora}/ run directories and prints the table; results.json beside
this file records it.
"""

import json
import os
import pathlib
import sys
import time

import jax
import yaml

from gptjax.config_files import load_train_config
from gptjax.runtime import sharding
from gptjax.training import loop, trainer, warm_start

HERE = pathlib.Path(__file__).parent


def finetune_config(pre_dir, overrides=()):
    text = (HERE / "finetune_shakespeare.yaml").read_text().replace("${GPTJAX_DATA_DIR}", os.environ["GPTJAX_DATA_DIR"])
    path = pathlib.Path(pre_dir).parent / "finetune_shakespeare.yaml"
    path.write_text(text)
    return load_train_config(str(path), [f"init_from={pre_dir}", *overrides])


def val_loss_before(cfg):
    """The pretrained model's loss on the fine-tuning validation split (what fine-tuning starts from)."""
    from gptjax.data import loader

    tokens = loader.load_tokens(cfg.data, cfg.init_from)
    mesh = sharding.make_mesh(cfg.mesh)
    tr = trainer.make_trainer(cfg, mesh)
    params = warm_start.load_params(cfg, mesh, tr.state_shardings["params"])
    return loop.evaluate(cfg, tr, params, tokens.val)


def timed(cfg, run_dir):
    t0 = time.perf_counter()
    result = loop.train_run(cfg, run_dir, progress=False)
    return result.val_loss, time.perf_counter() - t0


def main(out: str) -> None:
    out = pathlib.Path(out)
    pre = load_train_config(str(HERE / "pretrain_gutenberg.yaml"))
    pre_val, pre_wall = timed(pre, out / "pretrain")
    full = finetune_config(out / "pretrain")
    lora = finetune_config(out / "pretrain", ["finetune.lora.rank=8", "finetune.lora.alpha=16", "optim.lr=3e-3"])
    before = val_loss_before(full)
    rows = {"pretrain (Gutenberg)": {"val_loss": pre_val, "wall_s": pre_wall}}
    for name, cfg in (("full", full), ("lora", lora)):
        val, wall = timed(cfg, out / name)
        tr = trainer.make_trainer(cfg, sharding.make_mesh(cfg.mesh))
        trainable = sum(a.size for a in jax.tree.leaves(tr.abstract_state["params"]))
        total = sum(a.size for a in jax.tree.leaves(tr.abstract_frozen if tr.abstract_frozen else
                                                    tr.abstract_state["params"]))
        opt_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tr.abstract_state["opt_state"]))
        rows[f"fine-tune on Shakespeare: {name}"] = {
            "val_loss_before": before, "val_loss_after": val, "wall_s": wall, "trainable_params": trainable,
            "trainable_fraction": trainable / total, "optimizer_state_bytes": opt_bytes}
    print(json.dumps(rows, indent=1))
    (HERE / "results.json").write_text(json.dumps({"rows": rows, "configs": {
        "pretrain": yaml.safe_load((HERE / "pretrain_gutenberg.yaml").read_text()),
        "finetune": yaml.safe_load((HERE / "finetune_shakespeare.yaml").read_text())}}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
