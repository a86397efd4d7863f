"""jax.profiler traces of chosen train steps (ProfileConfig), and a summary of where their time went.

The trace lands in the run directory's profile/ as jax writes it (plugins/profile/<time>/: an
.xplane.pb for TensorBoard's profile plugin or XProf, and perfetto_trace.json.gz for Perfetto);
profile/summary.txt reads the Perfetto file back: the traced steps' wall time, and the compiled
program's ops that took most of it. While tracing, each step is waited for inside its annotation,
so a step's span covers its execution, not only its dispatch.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import pathlib
import statistics
import tempfile

import jax

from gptjax.config import ProfileConfig
from gptjax.store import paths

STEP = "train"  # the annotation name of a traced step
SUMMARY = "summary.txt"
TOP_OPS = 12


class StepProfiler:
    """Starts the trace before step `start`, ends it after step `start + steps - 1` (or when the
    loop ends first) and writes the summary; does nothing while profile.start_step is None."""

    def __init__(self, cfg: ProfileConfig, run_dir, first_step: int, say=print):
        self.start = None if cfg.start_step is None else (cfg.start_step or first_step + 2)
        self.last = None if self.start is None else self.start + cfg.steps - 1
        self.target = paths.as_path(run_dir) / "profile"
        self.say = say
        self.local = None  # where jax writes the trace: the run directory, or a temporary one for gs:// / s3://
        self.active = False

    @contextlib.contextmanager
    def step(self, number: int, result):
        """Around one step's dispatch; `result()` gives what to wait for while tracing."""
        if self.start == number:
            self.local = pathlib.Path(tempfile.mkdtemp(prefix="gptjax-profile-")) if paths.is_remote(self.target) \
                else pathlib.Path(str(self.target))
            jax.profiler.start_trace(str(self.local), create_perfetto_trace=True)
            self.active = True
        if not self.active:
            yield
            return
        with jax.profiler.StepTraceAnnotation(STEP, step_num=number):
            yield
            jax.block_until_ready(result())
        if number == self.last:
            self.close()

    def close(self) -> None:
        """End the trace (also when the loop stops before the last traced step) and summarise it."""
        if not self.active:
            return
        jax.profiler.stop_trace()
        self.active = False
        if jax.process_index() != 0:
            return
        text = summarize(self.local)
        paths.write_text(self.local / SUMMARY, text)
        if paths.is_remote(self.target):
            for rel in paths.files(self.local):
                paths.copy_file(self.local / rel, self.target / rel)
        self.say(f"profile of steps {self.start}-{self.last} in {self.target} (TensorBoard's profile plugin, "
                 f"XProf or ui.perfetto.dev):\n{text}")


def summarize(directory) -> str:
    """Where the traced steps' time went, from the newest Perfetto trace under `directory`."""
    traces = sorted(pathlib.Path(directory).glob("plugins/profile/*/perfetto_trace.json.gz"))
    if not traces:
        return "no Perfetto trace was written: open the .xplane.pb in TensorBoard or XProf\n"
    data = json.loads(gzip.decompress(traces[-1].read_bytes()))
    events = data["traceEvents"] if isinstance(data, dict) else data
    processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e["name"] == "thread_name"}
    spans = [e for e in events if e.get("ph") == "X"]
    steps = [e["dur"] / 1e3 for e in spans if e["name"] == STEP]
    ops: collections.Counter = collections.Counter()
    for e in spans:
        if _is_device_op(processes.get(e["pid"], ""), threads.get((e["pid"], e.get("tid")), "")):
            ops[e["name"]] += e["dur"] / 1e3
    lines = [f"{len(steps)} traced steps: median {statistics.median(steps):.1f} ms, total {sum(steps):.1f} ms"
             if steps else "no step spans in the trace"]
    total = sum(steps) or sum(ops.values()) or 1.0
    lines.append(f"compiled ops: {sum(ops.values()):.1f} ms in all ({sum(ops.values()) / total:.0%} of the steps; "
                 "the rest is dispatch, transfers and waiting)")
    lines += [f"  {ms:9.2f} ms  {ms / total:6.1%}  {name}" for name, ms in ops.most_common(TOP_OPS)]
    return "\n".join(lines) + "\n"


def _is_device_op(process: str, thread: str) -> bool:
    # Accelerators: the device's streams ("/device:GPU:0", "/device:TPU:0"). CPU: XLA's own threads
    # run the compiled program ("tf_XLAEigen/..."), beside the Python and runtime threads.
    return process.startswith("/device:") or "XLA" in thread
