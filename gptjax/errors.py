"""Why a run stops, as the command line reports it: a message and an exit code, never a traceback.

Exit codes of `gptjax train` (and the other verbs):
  0   finished, or stopped cleanly by SIGTERM/SIGINT after saving a checkpoint
  1   stopped: a non-finite loss (nan_policy=stop), or an I/O failure such as a full disk; the
      last committed checkpoint is intact and the same command resumes from it
  2   refused: bad input (config, override, data, tokenizer, checkpoint or run directory);
      nothing was written
  3   hung: no progress within watchdog.timeout_s (or startup_s); every thread's stack is in the
      run directory, the last checkpoint is intact, and the launchers restart the same command
  -9  (137 from a shell) killed by SIGKILL; the same command resumes from the last checkpoint
"""


class DataError(ValueError):
    """A corpus, text file or token file that cannot be used; the message says which and what to do."""


class RunStopped(RuntimeError):
    """The run ended early for a reason the user must see (a non-finite loss)."""


class Interrupted(Exception):
    """A stop signal arrived during a pass that is abandoned whole (an evaluation): the resumed
    run repeats it, so nothing half-done is ever recorded."""


EXIT_FINISHED, EXIT_STOPPED, EXIT_REFUSED, EXIT_HUNG = 0, 1, 2, 3
