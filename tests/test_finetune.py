"""Fine-tuning from pretrained checkpoints: init_from (config, tokenizer and weights from a Hugging
Face, gptjax or run directory), parity of the first step's loss with transformers, sharded loading,
and the way back to transformers (weights and tokenizer)."""

import json

import jax
import numpy as np
import pytest
import yaml
from helpers import DOCS_TEXT, metrics, reference

from gptjax.config import ConfigError
from gptjax.config_files import load_train_config
from gptjax.data import loader
from gptjax.training import loop, warm_start

pytestmark = pytest.mark.xdist_group("finetune")

TEXT = DOCS_TEXT
PRETRAIN_TEXT, FINETUNE_TEXT = TEXT[:6000], TEXT[6000:24000]
HF_TEXT, HF_OPTIONS = PRETRAIN_TEXT, {"positions": 64}  # hf_dir (conftest)
NO_DROPOUT = ["model.embed_dropout=0.0", "model.attn_dropout=0.0", "model.resid_dropout=0.0"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "train.txt"
    path.write_text(FINETUNE_TEXT)
    return path


def finetune_config(tmp_path, hf_dir, text_file, *overrides, steps=1):
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump({
        "init_from": str(hf_dir), "steps": steps, "log_every": 1, "eval_every": steps, "checkpoint_every": steps,
        "eval_batch_size": 8, "sample_tokens": 0, "peak_flops": 1e11,
        "data": {"text_files": [str(text_file)], "seq_len": 32, "batch_size": 8},
        "optim": {"lr": 1e-3, "warmup_steps": 0, "min_lr": 1e-4}}))
    return load_train_config(str(path), [*NO_DROPOUT, *overrides])


@pytest.mark.torch
def test_init_from_takes_model_and_tokenizer_from_the_checkpoint(tmp_path, hf_dir, text_file):
    cfg = finetune_config(tmp_path, hf_dir, text_file)
    hf_config = json.loads((hf_dir / "config.json").read_text())
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.model.vocab_size, cfg.model.max_seq_len) == (
        hf_config["n_embd"], hf_config["n_layer"], hf_config["vocab_size"], hf_config["n_positions"])
    assert cfg.data.tokenizer == "init_from"
    tokenizer = loader.make_tokenizer(cfg.data, warm_start.checkpoint_tokenizer(cfg))
    transformers = reference("transformers")
    theirs = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert tokenizer.encode(FINETUNE_TEXT[:2000]) == theirs(FINETUNE_TEXT[:2000])["input_ids"]
    assert tokenizer.eot_id == hf_config["eos_token_id"]


@pytest.mark.torch
@pytest.mark.slow
def test_first_step_loss_equals_transformers(tmp_path, hf_dir, text_file):
    torch, transformers = reference("torch"), reference("transformers")
    cfg = finetune_config(tmp_path, hf_dir, text_file)
    loop.train_run(cfg, tmp_path / "run", progress=False)
    ours = metrics(tmp_path / "run")[0]["loss"]
    tokens = loader.load_tokens(cfg.data, warm_start.checkpoint_tokenizer(cfg))
    rows = loader.TrainBatches(tokens.train, cfg.resolved_seq_len, cfg.data.batch_size, cfg.seed).at(0)
    model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        theirs = float(model(torch.tensor(rows, dtype=torch.long), labels=torch.tensor(rows, dtype=torch.long)).loss)
    assert ours == pytest.approx(theirs, rel=1e-5)
    # The run directory keeps the checkpoint's tokenizer, so inspection decodes as training encoded.
    stored = json.loads((tmp_path / "run" / "tokenizer.json").read_text())
    assert stored["kind"] == "hf"


@pytest.mark.torch
def test_init_from_refuses_shape_changes_before_reading_weights(tmp_path, hf_dir, text_file):
    with pytest.raises(ConfigError, match=r"model\.d_model = 64 \(the checkpoint has 48\)"):
        finetune_config(tmp_path, hf_dir, text_file, "model.d_model=64")
    with pytest.raises(ConfigError, match=r"model\.position = 'rotary'"):
        finetune_config(tmp_path, hf_dir, text_file, "model.position=rotary")
    cfg = finetune_config(tmp_path, hf_dir, text_file, "model.remat=full", "model.vocab_pad_multiple=64",
                          "model.resid_dropout=0.1")
    assert (cfg.model.remat, cfg.model.padded_vocab, cfg.model.resid_dropout) == ("full", 448, 0.1)
    # A config built in code is checked by the run itself, before anything is written.
    bad = cfg.__class__(**{**cfg.__dict__, "model": cfg.model.replace(n_layers=3)})
    with pytest.raises(ConfigError, match=r"model\.n_layers = 3"):
        loop.train_run(bad, tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


@pytest.mark.torch
@pytest.mark.slow
def test_padded_vocabulary_loads_the_same_function(tmp_path, hf_dir, text_file):
    """Padding rows are added on load; the loss of the first step cannot change."""
    a = finetune_config(tmp_path, hf_dir, text_file)
    b = finetune_config(tmp_path, hf_dir, text_file, "model.vocab_pad_multiple=64")
    loop.train_run(a, tmp_path / "a", progress=False)
    loop.train_run(b, tmp_path / "b", progress=False)
    assert metrics(tmp_path / "b")[0]["loss"] == pytest.approx(metrics(tmp_path / "a")[0]["loss"], rel=1e-6)
    # ... and a run directory continues as init_from of another run, rows repadded back to none.
    c = finetune_config(tmp_path, tmp_path / "b", text_file, "model.vocab_pad_multiple=1")
    loop.train_run(c, tmp_path / "c", progress=False)
    assert metrics(tmp_path / "c")[0]["loss"] < metrics(tmp_path / "b")[0]["loss"]


@pytest.mark.torch
@pytest.mark.slow
def test_fine_tuned_run_exports_to_transformers_and_improves_held_out_loss(tmp_path, hf_dir, text_file):
    torch, transformers = reference("torch"), reference("transformers")
    from gptjax.interop import pretrained

    cfg = finetune_config(tmp_path, hf_dir, text_file, steps=30)
    loop.train_run(cfg, tmp_path / "run", progress=False)
    pretrained.convert(tmp_path / "run", tmp_path / "export", to="hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    held_out = TEXT[24000:]
    ours = loader.make_tokenizer(cfg.data, warm_start.checkpoint_tokenizer(cfg))
    assert tok(held_out)["input_ids"] == ours.encode(held_out)
    ids = torch.tensor([ours.encode(held_out)[:64]])

    def loss(directory):
        model = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
        with torch.no_grad():
            return float(model(ids, labels=ids).loss)

    assert loss(tmp_path / "export") < loss(hf_dir) - 0.3


@pytest.mark.torch
@pytest.mark.slow
def test_sharded_load_never_puts_a_whole_parameter_on_one_device(tmp_path, monkeypatch):
    """pythia-70m (282 MB of float32 parameters) fine-tunes on 8 devices with fsdp, each device
    allowed a quarter of the model: every device receives only its shard of each parameter."""
    torch, transformers = reference("torch"), reference("transformers")
    from gptjax import presets
    from gptjax.interop import hf_config

    cfg_hf = hf_config.config_to_hf(presets.get_preset("pythia-70m"))
    torch.manual_seed(0)
    transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**cfg_hf)).save_pretrained(tmp_path / "pythia")
    text = tmp_path / "t.txt"
    text.write_text(TEXT[:20000])
    total = 4 * 70_426_624
    budget = total // 4
    handed: dict[int, int] = {}
    real_put = warm_start._put

    def spying_put(host, sh):
        arr = real_put(host, sh)
        for shard in arr.addressable_shards:
            handed[shard.device.id] = handed.get(shard.device.id, 0) + shard.data.nbytes
        return arr

    monkeypatch.setattr(warm_start, "_put", spying_put)
    cfg = finetune_config(tmp_path, tmp_path / "pythia", text, "data.tokenizer=gpt2", "mesh.data=1",
                          "mesh.fsdp=8", "data.seq_len=16")
    loop.train_run(cfg, tmp_path / "run", progress=False)
    assert sorted(handed) == list(range(8))
    assert max(handed.values()) <= budget, handed
    assert sum(handed.values()) == pytest.approx(total, rel=0.01)  # every byte arrived, once
    assert np.isfinite(metrics(tmp_path / "run")[0]["loss"])


LORA = ["finetune.lora.rank=4", "finetune.lora.alpha=8"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, hf_dir, text_file):
    d = tmp_path_factory.mktemp("lora")
    cfg = finetune_config(d, hf_dir, text_file, *LORA, "optim.lr=1e-2", steps=20)
    loop.train_run(cfg, d / "run", progress=False)
    return cfg, d / "run"


@pytest.mark.torch
@pytest.mark.slow
def test_lora_trains_adapters_only_from_the_base_model(tmp_path, lora_run, hf_dir, text_file):
    from gptjax.interop import runs
    from gptjax.runtime import sharding
    from gptjax.store import checkpoint
    from gptjax.training import trainer

    cfg, run_dir = lora_run
    rows = metrics(run_dir)
    # B starts at zero: the first step is the base model's loss exactly (full fine-tuning's first step).
    full = finetune_config(tmp_path, hf_dir, text_file)
    loop.train_run(full, tmp_path / "full", progress=False)
    assert rows[0]["loss"] == pytest.approx(metrics(tmp_path / "full")[0]["loss"], rel=1e-6)
    # The base is a random model with a frozen tied head: adapters can lower its loss only a little.
    assert np.mean([r["loss"] for r in rows[-5:]]) < rows[0]["loss"] - 0.05
    # The checkpoint and the optimizer hold adapters only: nothing of the base's size.
    tr = trainer.make_trainer(cfg, sharding.make_mesh(cfg.mesh))
    ckpts = checkpoint.Checkpoints(run_dir / "checkpoints", 10, None, read_only=True)
    try:
        state, meta = ckpts.restore(tr.abstract_state)
    finally:
        ckpts.close()
    assert meta["base_fingerprint"] == warm_start.fingerprint(str(hf_dir))
    n_adapters = sum(x.size for x in jax.tree.leaves(state["params"]))
    n_base = sum(x.size for x in jax.tree.leaves(tr.abstract_frozen))
    # 2 layers x (q, k, v, o: 48 x 4 + 4 x 48; up, down: 48 x 4 + 4 x 192 and its mirror).
    assert n_adapters == 2 * (4 * (48 * 4 + 4 * 48) + 2 * (48 * 4 + 4 * 192))
    assert n_adapters / n_base < 0.25
    largest_adapter = max(x.size for x in jax.tree.leaves(state["params"]))
    assert max(x.size for x in jax.tree.leaves(state["opt_state"])) <= largest_adapter
    # Reading the run merges the adapters into the base.
    model, _, _ = runs.load_model(run_dir)
    kernel = np.asarray(model.blocks.attn.q.kernel[...])
    from gptjax.interop import hf as hf_lib

    base = hf_lib.load_hf(hf_dir).blocks.attn.q.kernel[...]
    assert not np.allclose(kernel, base)


@pytest.mark.torch
@pytest.mark.slow
def test_lora_exports_merged_and_as_peft_adapters_with_equal_logits(tmp_path, lora_run, hf_dir):
    """The merged export and PEFT's own loading of our adapters onto the base give our logits."""
    torch, transformers, peft = reference("torch"), reference("transformers"), reference("peft")
    from helpers import gptjax_cli

    from gptjax.interop import runs

    _, run_dir = lora_run
    gptjax_cli("convert", run_dir, tmp_path / "merged", "--to", "hf", "--merge-lora")
    gptjax_cli("convert", run_dir, tmp_path / "adapters", "--to", "hf", "--peft")
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == ["adapter_config.json",
                                                                         "adapter_model.safetensors"]
    run_cfg = load_train_config(str(run_dir / "config.yaml"))
    ids = np.asarray(loader.make_tokenizer(run_cfg.data, warm_start.checkpoint_tokenizer(run_cfg))
                     .encode(TEXT[24000:25000])[:48])[None]
    model, _, _ = runs.load_model(run_dir)
    ours = np.asarray(model.logits(ids))[..., :model.cfg.vocab_size]
    with torch.no_grad():
        merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        base = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
        adapted = peft.PeftModel.from_pretrained(base, tmp_path / "adapters").eval()
        t = torch.tensor(ids)
        via_merge, via_peft = merged(t).logits.numpy(), adapted(t).logits.numpy()
        plain = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()(t).logits.numpy()
    scale = np.abs(ours).max()
    assert np.abs(via_merge - ours).max() / scale < 1e-5
    assert np.abs(via_peft - ours).max() / scale < 1e-5
    assert np.abs(plain - ours).max() / scale > 1e-3  # the adapters do change the model


@pytest.mark.torch
def test_peft_export_refuses_full_fine_tuning_runs(tmp_path, hf_dir, text_file):
    from helpers import gptjax_cli

    cfg = finetune_config(tmp_path, hf_dir, text_file)
    loop.train_run(cfg, tmp_path / "run", progress=False)
    out = gptjax_cli("convert", tmp_path / "run", tmp_path / "x", "--to", "hf", "--peft", check=False)
    assert out.returncode == 2 and "not a LoRA run" in out.stderr, out.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.torch
@pytest.mark.slow
def test_sft_first_step_loss_equals_transformers_on_response_tokens(tmp_path, hf_dir):
    """Packed supervised rows through gptjax against each example alone through transformers,
    with the prompt's labels set to -100 (the way transformers users mask prompts)."""
    torch, transformers = reference("torch"), reference("transformers")
    from gptjax.finetune import sft

    words = TEXT[6000:24000].split()
    rng = np.random.default_rng(0)
    records = [{"prompt": " ".join(rng.choice(words, 3)), "response": " ".join(rng.choice(words, 4))}
               for _ in range(80)]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = finetune_config(tmp_path, hf_dir, tmp_path / "unused.txt", "data.text_files=[]",
                          f"data.sft_files=[{tmp_path / 'sft.jsonl'}]", "data.seq_len=64")
    loop.train_run(cfg, tmp_path / "run", progress=False)
    ours = metrics(tmp_path / "run")[0]["loss"]
    tokenizer = loader.make_tokenizer(cfg.data, warm_start.checkpoint_tokenizer(cfg))
    rows = sft.Batches(sft.load(cfg.data, tokenizer, 64).train, cfg.data.batch_size, cfg.seed).at(0)
    assert rows["segments"].max() > 1  # packed
    model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    nll, count = 0.0, 0
    for r in range(len(rows["tokens"])):
        for s in range(1, rows["segments"][r].max() + 1):
            where = np.flatnonzero(rows["segments"][r] == s)
            ids = torch.tensor(rows["tokens"][r][where][None], dtype=torch.long)
            # Target t (ids[t + 1]) is trained if gptjax weighs it. The model sees the inputs only,
            # as gptjax does: a segment filling a whole row (seq_len + 1 tokens) would need one
            # position more than the model has.
            trained = torch.tensor(rows["weights"][r][where[:-1]] > 0)
            with torch.no_grad():
                logits = model(ids[:, :-1]).logits[0]
            losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            nll, count = nll + float(losses[trained].sum()), count + int(trained.sum())
    assert ours == pytest.approx(nll / count, rel=1e-5)


@pytest.mark.torch
def test_init_from_a_gptjax_directory_starts_from_the_same_weights(tmp_path, hf_dir, text_file):
    """HF -> gptjax directory (weights and tokenizer.json): fine-tuning from either is the same."""
    from gptjax.interop import pretrained

    pretrained.convert(hf_dir, tmp_path / "native", to="gptjax")
    assert (tmp_path / "native" / "tokenizer.json").is_file()
    a = finetune_config(tmp_path, hf_dir, text_file)
    b = finetune_config(tmp_path, tmp_path / "native", text_file)
    assert loader.make_tokenizer(b.data, warm_start.checkpoint_tokenizer(b)).encode(FINETUNE_TEXT[:500]) == \
        loader.make_tokenizer(a.data, warm_start.checkpoint_tokenizer(a)).encode(FINETUNE_TEXT[:500])
    loop.train_run(a, tmp_path / "a", progress=False)
    loop.train_run(b, tmp_path / "b", progress=False)
    assert metrics(tmp_path / "b")[0]["loss"] == metrics(tmp_path / "a")[0]["loss"]


@pytest.mark.torch
@pytest.mark.slow
def test_lora_with_dropout_attaches_adapters_beside_their_layers(hf_dir):
    """The attached path (used when finetune.lora.dropout > 0) is the merged function when nothing
    is dropped, and dropout changes it only through the adapters."""
    from flax import nnx

    from gptjax.config import LoraConfig
    from gptjax.finetune import lora
    from gptjax.interop import hf as hf_lib
    from gptjax.runtime import sharding

    base = hf_lib.load_hf(hf_dir)
    graphdef, state = nnx.split(base)
    params = nnx.to_pure_dict(state)
    cfg = LoraConfig(rank=4, alpha=8.0, targets=("attn.q", "attn.o", "mlp.up", "mlp.down"))
    shapes, _ = lora.adapter_layout(cfg, params, sharding.logical_axes(base))
    adapters = jax.tree.map(lambda a: 0.05 * jax.random.normal(jax.random.key(a.size), a.shape), shapes)
    ids = np.arange(40)[None] % 300
    merged = nnx.merge(graphdef, lora.merge(params, adapters, cfg)).logits(ids)

    def attached(rate, key):
        model = nnx.merge(graphdef, params)
        lora.attach(model, adapters, LoraConfig(**{**cfg.__dict__, "dropout": rate}), key)
        return model.logits(ids)

    np.testing.assert_allclose(attached(0.0, jax.random.key(0)), merged, rtol=1e-5, atol=1e-5)
    dropped = attached(0.5, jax.random.key(0))
    assert np.abs(dropped - merged).max() > 1e-3
    assert np.abs(dropped - attached(0.5, jax.random.key(1))).max() > 1e-3  # a new key, a new mask
    plain = base.logits(ids)
    assert np.abs(merged - plain).max() > 1e-3  # the adapters matter at all


@pytest.mark.torch
@pytest.mark.slow
def test_lora_dropout_trains(tmp_path, hf_dir, text_file):
    cfg = finetune_config(tmp_path, hf_dir, text_file, *LORA, "finetune.lora.dropout=0.1", "optim.lr=1e-2",
                          steps=10)
    loop.train_run(cfg, tmp_path / "run", progress=False)
    rows = metrics(tmp_path / "run")
    assert all(np.isfinite(r["loss"]) for r in rows) and rows[-1]["loss"] < rows[0]["loss"]
