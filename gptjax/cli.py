"""`gptjax` command line: assembles the commands each subpackage contributes (its commands.py's
add_parser), runs the one asked for, and turns the package's errors into exit codes."""

from __future__ import annotations

import argparse
import sys

from gptjax.evals import commands as eval_commands
from gptjax.finetune import commands as finetune_commands
from gptjax.interop import commands as interop_commands
from gptjax.launch import commands as launch_commands
from gptjax.sweeps import commands as sweep_commands
from gptjax.tools import commands as tool_commands
from gptjax.training import commands as training_commands

# In the order `gptjax --help` lists them: a run's life, then the tools around it.
COMMANDS = (training_commands, finetune_commands, interop_commands, eval_commands, sweep_commands,
            launch_commands, tool_commands)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gptjax", description="GPT-family language models in JAX: train, fine-tune, "
                                "sample, evaluate, sweep and launch on clusters.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)
    for commands in COMMANDS:
        commands.add_parser(sub)
    for parser in _parsers(p):
        parser.formatter_class = _Help
    return p


class _Help(argparse.HelpFormatter):
    """Each flag's help ends with its default, unless it has none or says it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if not action.option_strings or default is None or default is False or default == [] \
                or default == argparse.SUPPRESS or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def _parsers(parser: argparse.ArgumentParser):
    """`parser` and every subcommand's parser under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def _version() -> str:
    from importlib import metadata

    return f"gptjax {metadata.version('gptjax')}"


def _apply_xla_profile(args) -> None:
    """XLA_FLAGS are read when jax starts its backend, which no command has done yet."""
    import os

    from gptjax.runtime import xla

    profile = getattr(args, "xla_profile", None) or os.environ.get("GPTJAX_XLA_PROFILE") or "none"
    xla.apply_profile(profile)


# Commands that train: their process hears SIGTERM/SIGINT from its first moment to its last.
TRAINING_COMMANDS = ("train", "finetune")


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] and sys.argv[1] in TRAINING_COMMANDS:
        _hold_stop_signals()
        try:
            return _main(sys.argv[1:])
        finally:
            _ignore_stop_signals()
    return _main(sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["lm-eval"]:  # every argument belongs to the harness
        from gptjax import harness

        return harness.main(argv[1:])
    parser = build_parser()
    # Overrides may come after options (`train cfg.yaml --run-dir d steps=10`), which argparse's
    # positional handling does not allow with subcommands; collect them here.
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "sweep" and getattr(args, "sweep_command", None) in ("run", "search") \
            and args.launcher != "local":
        args.launcher_flags = extra  # the cluster backend's flags
    elif extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    from gptjax import errors
    from gptjax.config import ConfigError
    from gptjax.data.loader import DataError
    from gptjax.data.tokenizer import TokenizerError
    from gptjax.evals import EvalError
    from gptjax.store.paths import StorageError
    from gptjax.store.tensor_files import CheckpointError

    _one_line_background_errors()
    _persistent_compilation_cache()
    try:
        _apply_xla_profile(args)
        return args.func(args)
    except (ConfigError, DataError, TokenizerError, CheckpointError, StorageError, FileNotFoundError,
            EvalError) as e:
        print(f"gptjax {args.command}: error: {e}", file=sys.stderr)
        return errors.EXIT_REFUSED
    except errors.RunStopped as e:
        print(f"gptjax {args.command}: stopped: {e}", file=sys.stderr)
        return errors.EXIT_STOPPED
    except OSError as e:  # a full disk, a lost connection: the last checkpoint is intact
        print(f"gptjax {args.command}: stopped: {e}", file=sys.stderr)
        return errors.EXIT_STOPPED
    except Exception as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print(f"gptjax {args.command}: stopped: {_out_of_memory(e, args)}", file=sys.stderr)
        return errors.EXIT_STOPPED


def _hold_stop_signals() -> None:
    """For the life of this process (a command run from the shell, not a call from Python): a
    SIGTERM during start-up is acted on after the first step (saved, exit 0), one after the last
    checkpoint or during the end-of-run writes lets the run finish with its own exit code, where
    the default action would end it with -15, which a scheduler reads as a crash."""
    from gptjax.training.signals import StopFlag

    StopFlag().__enter__()  # never left: the process ends holding it


def _ignore_stop_signals() -> None:
    """The command's work is done and its exit code decided: a stop signal now changes nothing,
    so it is ignored. Python's finalization sets the handlers it installed back to the default
    action (which ends the process with -15) but leaves an ignored signal ignored; the chaos run
    saw one SIGTERM in 10 land in that window, after the run's last checkpoint."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _out_of_memory(error: Exception, args) -> str:
    """What to do when a compiled program ran out of device memory: the device's memory, what
    the compiler said it needed, and the plan command for this very config."""
    import jax

    from gptjax.runtime import hardware

    said = str(error).strip().splitlines()[0]
    capacity = hardware.device_capacity(jax.devices()[0])
    has = f"a {jax.devices()[0].device_kind} device has {capacity / 2**30:.2f} GiB; " if capacity else ""
    config = getattr(args, "config", None)
    plan = " ".join(["gptjax plan", *([config] if config else []), *getattr(args, "overrides", [])])
    return (f"out of device memory ({said}). {has}`{plan}` shows what each part of the step needs. Lower it with "
            "model.remat=full, a smaller data.batch_size with optim.grad_accum to keep the batch, or more devices "
            "(mesh.fsdp). The last committed checkpoint is intact; the same command resumes from it.")


def _persistent_compilation_cache() -> None:
    """Compiled steps are kept in GPTJAX_CACHE_DIR/jax (unless JAX_COMPILATION_CACHE_DIR says
    otherwise): a resumed or repeated run skips compilation (14 s -> 7 s for a tiny run here)."""
    import jax

    from gptjax.store import paths

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(paths.cache_root() / "jax"))


def _one_line_background_errors() -> None:
    """Failures in library threads (Orbax's writers, TensorBoard's) as one line each: the
    command reports what happened itself, and a wall of tracebacks would bury it."""
    import logging
    import threading

    def first(value) -> str:  # TensorStore's errors carry their whole spec, hundreds of lines
        text = str(value).strip()
        return text.splitlines()[0] if text else ""

    class OneLine(logging.Filter):
        def filter(self, record):
            if record.exc_info:
                error = f"{record.exc_info[0].__name__}: {first(record.exc_info[1])}"
                record.msg = f"{first(record.getMessage())} ({error})"
                record.args, record.exc_info, record.exc_text = None, None, None
            return True

    logging.getLogger("absl").addFilter(OneLine())
    threading.excepthook = lambda a: print(f"WARNING: {a.thread.name if a.thread else 'a thread'}: "
                                           f"{a.exc_type.__name__}: {first(a.exc_value)}", file=sys.stderr)
    sys.unraisablehook = lambda u: print(f"WARNING: {u.exc_type.__name__}: {first(u.exc_value)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
