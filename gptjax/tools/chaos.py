"""Fault injection: run a small job, break it at seeded random points, resume, and check that
nothing was lost (`gptjax chaos`; tests/faults runs the short mode).

Faults: SIGKILL during a step, during an asynchronous save, during eval and during the final
save; SIGTERM (preemption); damage to a committed checkpoint (a flipped byte, a truncated file, a
deleted manifest, a planted symlink); a full disk during a save (the run fills its tmpfs run
directory just before a save: faults.fill_disk_at_step; root only); in a 2-process run, one
process killed. After each the same command resumes, and the harness checks: final parameters
bit-identical to an uninterrupted run, `metrics.jsonl` holding each step once with the
uninterrupted run's losses, no step lost beyond the checkpoint cadence, and the documented exit
codes and messages (gptjax/errors.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import yaml

# A job small enough that one start, compile included, takes seconds on a CPU.
DEFAULT_CONFIG = {
    "model": {"vocab_size": 65, "max_seq_len": 32, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64},
    "data": {"corpus": "tinyshakespeare", "tokenizer": "char", "batch_size": 8},
    # decay_steps fixed: a run stopped by SIGTERM is started with a longer `steps` and resumed
    # with the reference's, and the schedule must not depend on it.
    "optim": {"lr": 3e-3, "warmup_steps": 2, "min_lr": 3e-4, "decay_steps": 12},
    "steps": 12, "eval_every": 6, "checkpoint_every": 4, "log_every": 1, "eval_batch_size": 256,
    "keep_last": 10, "peak_flops": 1.0e11, "sample_tokens": 5,
}
KILLED = -signal.SIGKILL


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str  # one of KINDS
    step: int | None = None  # where the fault is injected (a step number)
    delay_s: float | None = None  # random faults: seconds after the first logged step

    @property
    def label(self) -> str:
        if self.step is not None:
            return f"{self.kind} @ step {self.step}"
        return f"{self.kind} @ {self.delay_s:.1f} s" if self.delay_s is not None else self.kind


KINDS = ("sigkill-step", "sigkill-save", "sigkill-eval", "sigkill-final-save", "sigterm", "damage-flip",
         "damage-truncate", "damage-manifest", "damage-symlink", "disk-full", "kill-one-process",
         "sigkill-random", "sigterm-random")


@dataclasses.dataclass
class Outcome:
    fault: Fault
    exit_code: int | None = None  # of the interrupted command
    message: str = ""  # what it (or the resume) said about the fault
    committed: int | None = None  # the newest committed checkpoint when the fault struck
    resumed_from: int | None = None
    lost_steps: int | None = None  # steps computed again after the resume
    params_identical: bool | None = None
    metrics_ok: bool | None = None
    ok: bool = False
    seconds: float = 0.0
    skipped: str | None = None


class Harness:
    """Runs `gptjax train` in subprocesses under `workdir`, one fresh run directory per fault."""

    def __init__(self, workdir, config: dict | None = None, env: dict | None = None):
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.config = {**DEFAULT_CONFIG, **(config or {})}
        self.config_path = os.path.join(self.workdir, "chaos.yaml")
        with open(self.config_path, "w") as f:
            yaml.safe_dump(self.config, f)
        self.env = {**os.environ, **(env or {})}
        self.steps, self.cadence = self.config["steps"], self.config["checkpoint_every"]
        self._references: dict[int, tuple[str, dict]] = {}

    # --- running ----------------------------------------------------------------------------

    def _cmd(self, run_dir: str, overrides=(), processes: int = 1) -> list[str]:
        if processes == 1:
            return [sys.executable, "-m", "gptjax.cli", "train", self.config_path, *overrides, "--run-dir", run_dir,
                    "--no-progress"]
        return [sys.executable, "-m", "gptjax.cli", "launch", "local", self.config_path, *overrides, "--run-dir",
                run_dir, "--processes", str(processes), "--devices-per-process", "2"]

    def _run(self, run_dir, overrides=(), processes=1, timeout=600) -> subprocess.CompletedProcess:
        return subprocess.run(self._cmd(run_dir, overrides, processes), capture_output=True, text=True,
                              timeout=timeout, env=self.env)

    def _fresh(self, name: str) -> str:
        path = os.path.join(self.workdir, re.sub(r"[^\w.-]+", "_", name))
        shutil.rmtree(path, ignore_errors=True)
        return path

    def reference(self, processes: int = 1) -> tuple[str, dict]:
        """An uninterrupted run: its directory and final parameters (host arrays by path)."""
        if processes not in self._references:
            run_dir = self._fresh(f"reference-{processes}p")
            out = self._run(run_dir, processes=processes)
            if out.returncode != 0:
                raise RuntimeError(f"the uninterrupted reference run failed:\n{out.stderr[-3000:]}")
            self._references[processes] = (run_dir, final_params(run_dir))
        return self._references[processes]

    # --- one fault --------------------------------------------------------------------------

    def run(self, fault: Fault) -> Outcome:
        t0 = time.time()
        outcome = Outcome(fault)
        try:
            getattr(self, "_" + fault.kind.replace("-", "_"))(fault, outcome)
        except _Skip as e:
            outcome.skipped = str(e)
        outcome.seconds = time.time() - t0
        return outcome

    def _sigkill_phase(self, fault, outcome, phase: str, processes: int = 1, extra=()):
        run_dir = self._fresh(fault.label)
        overrides = [f"faults.kill_at_step={fault.step}", f"faults.kill_during={phase}", *extra]
        out = self._run(run_dir, overrides, processes)
        outcome.exit_code = out.returncode
        outcome.message = _last_line(out.stderr)
        expected = KILLED if processes == 1 else 1
        self._resume_and_check(run_dir, fault.step, outcome, processes, out.returncode == expected)

    def _sigkill_step(self, fault, outcome):
        self._sigkill_phase(fault, outcome, "step")

    def _sigkill_save(self, fault, outcome):
        self._sigkill_phase(fault, outcome, "save")

    def _sigkill_eval(self, fault, outcome):
        self._sigkill_phase(fault, outcome, "eval")

    def _sigkill_final_save(self, fault, outcome):
        self._sigkill_phase(dataclasses.replace(fault, step=self.steps), outcome, "save")

    def _kill_one_process(self, fault, outcome):
        self._sigkill_phase(fault, outcome, "step", processes=2, extra=["faults.kill_process=1"])
        outcome.ok = outcome.ok and "process 1 of 2 died (signal SIGKILL)" in outcome.message

    def _sigterm(self, fault, outcome):
        run_dir = self._fresh(fault.label)
        proc = subprocess.Popen(self._cmd(run_dir, ["steps=100000"]), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env)
        _wait(lambda: _logged_steps(run_dir) >= fault.step, proc, 300)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
        outcome.exit_code, outcome.message = proc.returncode, _last_line(err)
        m = re.search(r"received SIGTERM[^:]*: saved step (\d+)", err)
        saved = int(m.group(1)) if m else None
        # Continue the same run to the configured length: compare with the reference.
        self._resume_and_check(run_dir, saved, outcome, 1, proc.returncode == 0 and saved is not None,
                               final_overrides=[f"steps={self.steps}"])

    def _damage(self, fault, outcome, how):
        # A finished run whose final checkpoint is then damaged: the same command must set it
        # aside, resume from the one before and compute the last steps again, exactly.
        run_dir = self._fresh(fault.label)
        shutil.copytree(self.reference()[0], run_dir, symlinks=True)
        newest = _committed(run_dir)[-1]
        damage(os.path.join(run_dir, "checkpoints", str(newest)), how)
        outcome.exit_code = 0
        resumed = self._resume_and_check(run_dir, newest, outcome, 1, True, lost_limit=self.cadence)
        outcome.message = _matching_line(resumed.stderr, f"checkpoint step {newest} is unusable")
        outcome.ok = outcome.ok and outcome.resumed_from == newest - self.cadence

    def _damage_flip(self, fault, outcome):
        self._damage(fault, outcome, "flip")

    def _damage_truncate(self, fault, outcome):
        self._damage(fault, outcome, "truncate")

    def _damage_manifest(self, fault, outcome):
        self._damage(fault, outcome, "manifest")

    def _damage_symlink(self, fault, outcome):
        self._damage(fault, outcome, "symlink")

    def _disk_full(self, fault, outcome):
        # The run fills its own (tmpfs) filesystem just before its second save, deterministically:
        # the first save commits, the second runs out of space, the run stops saying so.
        first, second = self.cadence, 2 * self.cadence
        mount = self._fresh("disk-full-mount")
        os.makedirs(mount)
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mount],
                                               capture_output=True).returncode != 0:
            raise _Skip("a tmpfs run directory needs root (mount -t tmpfs)")
        try:
            run_dir = os.path.join(mount, "run")
            out = self._run(run_dir, [f"faults.fill_disk_at_step={second}"])
            outcome.exit_code, outcome.message = out.returncode, _matching_line(out.stderr, "did not commit")
            if "did not commit" not in out.stderr:
                outcome.message = out.stderr[-3000:]
            last = _committed(run_dir)
            intact = last == [first] and _verified(run_dir, first)
            from gptjax.training.fault_hooks import DISK_FILLER

            filler = os.path.join(run_dir, DISK_FILLER)
            if os.path.exists(filler):
                os.remove(filler)  # space freed: the same command resumes
            self._resume_and_check(run_dir, self.steps, outcome, 1,
                                   out.returncode == 1 and f"step {second} to" in out.stderr and intact,
                                   lost_limit=self.steps)
        finally:
            subprocess.run(["umount", mount], capture_output=True)

    def _sigkill_random(self, fault, outcome):
        self._random_signal(fault, outcome, signal.SIGKILL)

    def _sigterm_random(self, fault, outcome):
        self._random_signal(fault, outcome, signal.SIGTERM)

    def _random_signal(self, fault, outcome, sig):
        """One signal at a random moment of a run that is then resumed (long mode chains them)."""
        run_dir = self._fresh(fault.label)
        proc = subprocess.Popen(self._cmd(run_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env)
        _wait(lambda: _logged_steps(run_dir) >= 1, proc, 300)
        time.sleep(fault.delay_s)
        at = _logged_steps(run_dir)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        outcome.exit_code, outcome.message = proc.returncode, _last_line(err)
        expected = (KILLED, 0) if sig == signal.SIGKILL else (0,)  # it may have finished first
        self._resume_and_check(run_dir, max(at, 1), outcome, 1, proc.returncode in expected)

    # --- resume and compare -----------------------------------------------------------------

    def _resume_and_check(self, run_dir, injected_step, outcome, processes, interrupted_as_documented,
                          lost_limit=None, final_overrides=()):
        """Resume with the same command and compare with the uninterrupted run. Nothing committed
        may be lost: the resume starts from the newest checkpoint committed at the fault (the one
        before it when that one was damaged). Orbax commits asynchronously (about a second here,
        many of these tiny steps), so a save still in flight at a kill is not committed, and up
        to two cadences of steps are computed again."""
        committed = _committed(run_dir)
        outcome.committed = committed[-1] if committed else 0
        resumed = self._run(run_dir, final_overrides, processes)
        m = re.search(r"resumed from step (\d+)", resumed.stderr)
        outcome.resumed_from = int(m.group(1)) if m else (None if "resumed" in resumed.stderr else 0)
        if resumed.returncode != 0:
            outcome.message = outcome.message or _last_line(resumed.stderr)
            return resumed
        ref_dir, ref_params = self.reference(processes)
        outcome.params_identical = _identical(final_params(run_dir), ref_params)
        rows, ref_rows = _metrics(run_dir), _metrics(ref_dir)
        outcome.metrics_ok = ([r["step"] for r in rows] == list(range(1, self.steps + 1))
                              and [r["loss"] for r in rows] == [r["loss"] for r in ref_rows])
        if injected_step is not None and outcome.resumed_from is not None:
            outcome.lost_steps = max(injected_step - outcome.resumed_from, 0)
        limit = 2 * self.cadence if lost_limit is None else lost_limit
        newest_kept = outcome.resumed_from == outcome.committed or lost_limit is not None
        outcome.ok = bool(interrupted_as_documented and outcome.params_identical and outcome.metrics_ok and newest_kept
                          and (outcome.lost_steps is None or outcome.lost_steps <= limit))
        return resumed


class _Skip(Exception):
    pass


def damage(step_dir: str, how: str) -> str:
    """Damage a committed checkpoint in place; returns the file it touched."""
    data = sorted(os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs if "/d/" in os.path.join(r, f))
    victim = data[0]
    if how == "flip":
        raw = bytearray(open(victim, "rb").read())
        raw[len(raw) // 2] ^= 0x01
        open(victim, "wb").write(bytes(raw))
    elif how == "truncate":
        with open(victim, "r+b") as f:
            f.truncate(max(os.path.getsize(victim) // 2, 1))
    elif how == "manifest":
        from gptjax.store.manifest import MANIFEST

        victim = os.path.join(step_dir, MANIFEST)
        os.unlink(victim)
    elif how == "symlink":
        foreign = victim + ".foreign"
        shutil.copyfile(victim, foreign)
        shutil.move(foreign, os.path.join(os.path.dirname(step_dir), os.path.basename(foreign)))
        os.unlink(victim)
        os.symlink(os.path.join(os.path.dirname(step_dir), os.path.basename(foreign)), victim)
    else:
        raise ValueError(f"damage how = {how!r}; accepted: flip, truncate, manifest, symlink")
    return victim


def final_params(run_dir) -> dict:
    from flax import nnx

    from gptjax.interop import runs

    model, _, _ = runs.load_model(run_dir)
    import jax

    return {"/".join(map(str, path)): np.asarray(jax.device_get(v.get_value()))
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _metrics(run_dir) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def _logged_steps(run_dir) -> int:
    try:
        return len(open(os.path.join(run_dir, "metrics.jsonl")).read().splitlines())
    except OSError:
        return 0


def _committed(run_dir) -> list[int]:
    d = os.path.join(run_dir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _verified(run_dir, step) -> bool:
    from gptjax.store import manifest

    return manifest.verify(os.path.join(run_dir, "checkpoints", str(step))) is None


def _wait(condition, proc, timeout):
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended before the fault could be injected:\n{proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"timed out after {timeout} s waiting to inject the fault")
        time.sleep(0.05)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and "bucket type" not in line]
    return lines[-1][:500] if lines else ""


def _matching_line(text: str, needle: str) -> str:
    return next((line[:500] for line in text.splitlines() if needle in line), _last_line(text))


# --- modes ------------------------------------------------------------------------------------

def short_faults(h: Harness) -> list[Fault]:
    """One of each kind, at seeded points (CI)."""
    rng = random.Random(0)
    c, n = h.cadence, h.steps
    eval_steps = [s for s in range(1, n) if s % h.config["eval_every"] == 0]
    return [Fault("sigkill-step", rng.randrange(c + 1, n)), Fault("sigkill-save", rng.choice(range(c, n, c))),
            Fault("sigkill-eval", rng.choice(eval_steps)), Fault("sigkill-final-save"),
            Fault("sigterm", rng.randrange(2, n - 1)),
            *[Fault(f"damage-{how}") for how in ("flip", "truncate", "manifest", "symlink")],
            Fault("disk-full"), Fault("kill-one-process", rng.randrange(c + 1, n))]


def long_faults(h: Harness, kills: int = 20, terms: int = 10, seed: int = 0) -> list[Fault]:
    """The short set plus `kills` SIGKILLs and `terms` SIGTERMs at random moments."""
    rng = random.Random(seed)
    span = 6.0  # seconds: about the length of the job after its first step on 2 CPU cores
    return [*short_faults(h), *[Fault("sigkill-random", delay_s=rng.uniform(0, span)) for _ in range(kills)],
            *[Fault("sigterm-random", delay_s=rng.uniform(0, span)) for _ in range(terms)]]


def table(outcomes: list[Outcome]) -> str:
    header = ("fault", "exit", "committed", "resumed from", "lost", "params", "metrics", "result", "s")
    rows = [header]
    for o in outcomes:
        rows.append((o.fault.label, "" if o.exit_code is None else str(o.exit_code),
                     "" if o.committed is None else str(o.committed),
                     "" if o.resumed_from is None else str(o.resumed_from),
                     "" if o.lost_steps is None else str(o.lost_steps),
                     {True: "identical", False: "DIFFER", None: ""}[o.params_identical],
                     {True: "exact", False: "WRONG", None: ""}[o.metrics_ok],
                     f"skipped: {o.skipped}" if o.skipped else ("ok" if o.ok else "FAIL"), f"{o.seconds:.0f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def main(workdir: str, *, long: bool = False, kills: int = 20, terms: int = 10, seed: int = 0,
         config: dict | None = None) -> int:
    if long and config is None:  # long enough for random moments to land anywhere in it
        config = {"steps": 48, "optim": {**DEFAULT_CONFIG["optim"], "decay_steps": 48}}
    h = Harness(workdir, config)
    faults = long_faults(h, kills, terms, seed) if long else short_faults(h)
    outcomes = []
    for fault in faults:
        outcomes.append(h.run(fault))
        o = outcomes[-1]
        print(f"{fault.label}: {'skipped' if o.skipped else 'ok' if o.ok else 'FAIL'} ({o.message})", flush=True)
    print(table(outcomes))
    failed = [o for o in outcomes if not o.ok and not o.skipped]
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} faults recovered "
          f"({sum(1 for o in outcomes if o.skipped)} skipped)")
    return 1 if failed else 0
