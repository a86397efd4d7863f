"""On PYTHONPATH of a multi-process test run: process 1 takes 35 s longer than its peers over the
first compilation after the training loop's start barrier, as one process on a loaded host can.
gloo gives a collective's first run 30 s to meet its peers, so without distributed.compile_together
the run fails with "GetKeyValue() timed out"."""

import os
import time

if os.environ.get("GPTJAX_PROCESS_ID") == "1":
    from jax._src.interpreters import pxla

    from gptjax.runtime import distributed

    _compile, _wait = pxla.MeshComputation.compile, distributed.wait_for_peers
    _state = {"armed": False}

    def _slow_compile(self, *args, **kwargs):
        if _state.pop("armed", False):
            time.sleep(35)
        return _compile(self, *args, **kwargs)

    def _wait_then_arm(name, *args, **kwargs):
        _wait(name, *args, **kwargs)
        if name == "gptjax-train-loop":
            _state["armed"] = True

    pxla.MeshComputation.compile = _slow_compile
    distributed.wait_for_peers = _wait_then_arm
