"""nanoGPT's Shakespeare-char CPU recipe in PyTorch beside ours, on the same data and machine.

The PyTorch side follows nanoGPT's model.py/train.py (GELU MLP, pre-LN, tied head, no biases,
c_proj init scaled by 1/sqrt(2L), AdamW decaying every >=2-D tensor, nanoGPT's get_lr, clip 1.0,
random windows with replacement) and measures validation loss over the whole split, as gptjax does.
Usage: python benchmarks/nanogpt_shakespeare.py [--seed S] [--steps N]   (needs torch)
"""

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptjax.config_files import load_train_config
from gptjax.data.loader import load_tokens


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.c_attn, self.attn_proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)
        self.h = h

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, d))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab, ctx, d, layers, heads):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=1337)  # nanoGPT's default seed
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args()
    cfg = load_train_config("experiments/shakespeare_char.yaml")
    m, o = cfg.model, cfg.optim
    steps = args.steps or cfg.steps
    tokens = load_tokens(cfg.data)
    train, val = np.asarray(tokens.train, np.int64), np.asarray(tokens.val, np.int64)
    torch.manual_seed(args.seed)
    model = GPT(m.vocab_size, m.max_seq_len, m.d_model, m.n_layers, m.n_heads)
    decay = [q for q in model.parameters() if q.dim() >= 2]
    no_decay = [q for q in model.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=(o.b1, o.b2))
    t, bs = cfg.resolved_seq_len, cfg.data.batch_size

    def get_lr(it):
        if it < o.warmup_steps:
            return o.lr * (it + 1) / (o.warmup_steps + 1)
        ratio = min((it - o.warmup_steps) / (o.decay_steps - o.warmup_steps), 1.0)
        return o.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (o.lr - o.min_lr)

    times = []
    for it in range(steps):
        ix = torch.randint(len(train) - t, (bs,))
        x = torch.stack([torch.from_numpy(train[i:i + t]) for i in ix])
        y = torch.stack([torch.from_numpy(train[i + 1:i + 1 + t]) for i in ix])
        for g in opt.param_groups:
            g["lr"] = get_lr(it)
        t0 = time.perf_counter()
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        times.append(time.perf_counter() - t0)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        n = (len(val) - 1) // t
        for start in range(0, n, 64):
            ids = range(start, min(start + 64, n))
            x = torch.stack([torch.from_numpy(val[i * t:i * t + t]) for i in ids])
            y = torch.stack([torch.from_numpy(val[i * t + 1:i * t + t + 1]) for i in ids])
            total += model(x, y).item() * x.numel()
            count += x.numel()
    print(json.dumps({"impl": "pytorch-nanogpt", "seed": args.seed, "steps": steps, "val_loss": total / count,
                      "ms_per_step_median": 1e3 * float(np.median(times[10:])), "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
