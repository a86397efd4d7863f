"""Command-line flags about the runtime, importable before jax starts (XLA_FLAGS must be set first)."""

from __future__ import annotations


def add_xla_profile(parser) -> None:
    parser.add_argument("--xla-profile", help="XLA flag profile added to XLA_FLAGS before jax starts: none, gpu "
                        "(the latency-hiding scheduler and pipelined collectives; gptjax/runtime/xla.py); default "
                        "$GPTJAX_XLA_PROFILE or none")
