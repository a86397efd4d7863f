"""XLA settings: the CPU compiler options reach the compiled train step; the GPU flag profile parses."""

import re
import subprocess
import sys

import jax
import pytest
from helpers import TINY_RUN
from helpers import gptjax_cli as gptjax

from gptjax.config import ConfigError, TrainConfig, from_dict
from gptjax.runtime import sharding, xla
from gptjax.tools import plan
from gptjax.training import trainer


def _compiled_step_text(options):
    cfg = from_dict(TrainConfig, TINY_RUN)
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    tr = trainer.make_trainer(cfg, mesh)
    lowered = trainer.make_train_step(tr).lower(tr.abstract_state, None, *plan.abstract_inputs(tr))
    return lowered.compile(compiler_options=options).as_text() if options is not None else lowered.compile().as_text()


def _library_reductions(text):
    return [line for line in text.splitlines() if re.search(r"%ynn_fusion[.\d]* = .*op_name=\"[^\"]*reduce_", line)]


@pytest.mark.slow
def test_cpu_steps_keep_reductions_out_of_ynnpack():
    assert xla.compiler_options() == xla.CPU_COMPILER_OPTIONS  # these tests run on CPU
    # XLA's defaults put the softmax and norm reductions into YNNPACK fusions (what made them slow);
    # the step as gptjax compiles it has none, so the option really reaches the compiler.
    # Options given to compile() override the jit's; naming reductions again restores XLA's default.
    with_reductions = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
    assert _library_reductions(_compiled_step_text(with_reductions)), "YNNPACK no longer fuses reductions: revisit"
    assert not _library_reductions(_compiled_step_text(None))


def test_gpu_profile_flags_parse_in_this_jaxlib():
    env_flags = " ".join(xla.GPU_PROFILE)
    # XLA aborts the process on an unknown flag, whatever the backend: a renamed flag fails here.
    env = {"XLA_FLAGS": env_flags, "PATH": "/usr/bin", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.jit(lambda x: x + 1)(1))"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "2", out.stderr[-2000:]


def test_profile_keeps_the_users_flags():
    env = {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false"}
    xla.apply_profile("gpu", env)
    flags = env["XLA_FLAGS"].split()
    assert flags[0] == "--xla_gpu_enable_latency_hiding_scheduler=false"
    assert len(flags) == len(xla.GPU_PROFILE)  # every other profile flag added once
    xla.apply_profile("gpu", env)
    assert env["XLA_FLAGS"].split() == flags  # idempotent
    with pytest.raises(ConfigError, match=r"--xla-profile \(or GPTJAX_XLA_PROFILE\) = 'tpu' is not one of none, gpu"):
        xla.apply_profile("tpu", env)


def test_cli_refuses_an_unknown_profile_before_starting(tmp_path):
    bad = gptjax("train", "gpt2", "--xla-profile", "fast", check=False)
    assert bad.returncode == 2 and "--xla-profile (or GPTJAX_XLA_PROFILE) = 'fast' is not one of" in bad.stderr
