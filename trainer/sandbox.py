"""The operating-system boundary around candidate code: bubblewrap namespaces, a seccomp filter, rlimits.

Every process that runs plugin code is started by `run_contained` inside `bwrap` with
- its own user, mount, PID, network, IPC, UTS and cgroup namespaces (`--unshare-all`): it sees no host
  process, reaches no host socket (its network is an empty loopback), and is `nobody` inside;
- a file system of only the Python runtime (read-only), the training input (read-only), a private
  writable scratch folder and an /etc/hosts naming only its loopback; a fresh /proc of its own PID
  namespace, a minimal read-only /dev, size-bounded tmpfs /tmp and /dev/shm; no further user namespaces
  (--disable-userns);
- an environment of only HOME, PATH, LANG, the user's name and the thread settings (`--clearenv`,
  `contained_environment`);
- a seccomp filter (libseccomp, exported to BPF) that refuses new processes (threads only), sockets
  other than AF_UNIX, ptrace and other processes' memory, namespaces and mounts, io_uring, BPF, keys,
  kernel modules and perf events; for a data-parallel group (trainer/distributed.py) it allows the torchrun
  agent to start its workers and TCP on the namespace's loopback, and each worker stacks a filter refusing
  new processes before candidate code runs;
- `--die-with-parent` and `--new-session`; when the contained command ends or its parent dies, the PID
  namespace's init goes and the kernel kills every process left in it (no orphans).
Resource limits (address space, CPU time, file size, open files, processes) are set by the contained
program itself before any candidate code runs (trainer/contained.py), so they cannot be raised again.

Where bubblewrap, user namespaces or libseccomp are missing, nothing runs: `SandboxUnavailable` says why.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import ctypes.util
import errno
import importlib.util
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cambrian.errors import ConfigError, TrainingError

NOBODY = 65534


def contained_environment(**settings: str) -> dict[str, str]:
    """The whole environment of a contained process, plus `settings` (thread counts, the GPUs it may see).
    USER and LOGNAME name the user because `nobody` has no passwd entry inside: getpass.getuser() reads them
    first, and torch asks it on CUDA (its compile cache folder is per user)."""
    return {"HOME": "/tmp", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1", "USER": "nobody", "LOGNAME": "nobody", **settings}


# The sandbox's /etc/hosts and /etc/nsswitch.conf (read-only, from the package).
SANDBOX_ETC = {name: Path(__file__).with_name(f"sandbox.{name}") for name in ("hosts", "nsswitch.conf")}
# Where the sandbox sees its two folders.
INPUT = "/input"
SCRATCH = "/scratch"
TMP_BYTES = 512 << 20
SHM_BYTES = 64 << 20


class StageFailure(TrainingError):
    """Training failed at a named stage (export, timeout, cpu, memory, crash, sandbox ...): exit code 4."""

    def __init__(self, stage: str, message: str, hint: str | None = None):
        super().__init__(f"{stage}: {message}", hint)
        self.stage = stage
        self.reason = message


class SandboxUnavailable(StageFailure):
    """The kernel or the machine cannot contain candidate code; it is not run at all (fail closed)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__("sandbox", message, hint)


@dataclass
class ContainedResult:
    returncode: int  # negative: killed by that signal
    wall_seconds: float
    timed_out: bool
    log_tail: str


# ---- seccomp --------------------------------------------------------------------------------------------

_SCMP_ACT_ALLOW = 0x7FFF0000
_CMP_NE, _CMP_MASKED_EQ = 1, 7
_CLONE_THREAD = 0x00010000
_AF_UNIX = 1
DENIED_SYSCALLS = (
    "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "chroot",
    "unshare", "setns", "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff",
    "open_by_handle_at", "name_to_handle_at", "acct", "quotactl", "syslog", "mknod", "mknodat", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "fanotify_init", "move_mount", "open_tree", "fsopen", "fsmount",
    "pidfd_getfd", "kcmp", "lookup_dcookie", "vhangup", "settimeofday", "clock_settime", "adjtimex",
)  # fmt: skip


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


@lru_cache(maxsize=1)
def _libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        raise SandboxUnavailable("libseccomp is not installed (Debian: apt-get install libseccomp2); "
                                 "candidate code is not run without its seccomp filter") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


PROCESS_SYSCALLS = ("fork", "vfork")


def _filter(processes: bool, sockets: bool, denied: tuple[str, ...]):
    """A libseccomp context (caller releases it): `denied` refused, and unless allowed, new processes and
    sockets other than AF_UNIX."""
    lib = _libseccomp()
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise SandboxUnavailable("libseccomp could not create a filter")

    def rule(action: int, name: str, *cmps: _ArgCmp) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not a syscall on this architecture
            return
        arr = (_ArgCmp * len(cmps))(*cmps) if cmps else None
        rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
        if rc < 0:
            lib.seccomp_release(ctx)
            raise SandboxUnavailable(f"libseccomp refused the rule for {name} ({os.strerror(-rc)})")

    for name in denied:
        rule(_errno_action(errno.EPERM), name)
    if not processes:
        # threads yes, processes no: clone without CLONE_THREAD is refused; clone3 hides its flags in
        # memory a filter cannot read, so it reports ENOSYS and the C library falls back to clone
        for name in PROCESS_SYSCALLS:
            rule(_errno_action(errno.EPERM), name)
        rule(_errno_action(errno.EPERM), "clone", _ArgCmp(0, _CMP_MASKED_EQ, _CLONE_THREAD, 0))
        rule(_errno_action(errno.ENOSYS), "clone3")
    if not sockets:
        rule(_errno_action(errno.EAFNOSUPPORT), "socket", _ArgCmp(0, _CMP_NE, _AF_UNIX, 0))
        rule(_errno_action(errno.EAFNOSUPPORT), "socketpair", _ArgCmp(0, _CMP_NE, _AF_UNIX, 0))
    return lib, ctx


def seccomp_program(network: bool = False) -> bytes:
    """The filter as a compiled BPF program (what `bwrap --seccomp FD` reads). `network`: a data-parallel
    group, whose torchrun agent starts the workers (each then forbids itself new processes before candidate
    code runs: forbid_new_processes) and whose workers talk TCP, over the loopback of the sandbox's own
    network namespace, the only interface there."""
    lib, ctx = _filter(processes=network, sockets=network,
                       denied=tuple(n for n in DENIED_SYSCALLS if n not in PROCESS_SYSCALLS))
    try:
        with tempfile.TemporaryFile() as f:
            rc = lib.seccomp_export_bpf(ctx, f.fileno())
            if rc < 0:
                raise SandboxUnavailable(f"libseccomp could not export the filter ({os.strerror(-rc)})")
            f.seek(0)
            return f.read()
    finally:
        lib.seccomp_release(ctx)


def _load(lib: ctypes.CDLL, ctx, what: str) -> None:
    try:
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        rc = lib.seccomp_load(ctx)  # sets no_new_privs first (libseccomp's default)
        if rc < 0:
            raise SandboxUnavailable(f"libseccomp could not load {what} ({os.strerror(-rc)})")
    finally:
        lib.seccomp_release(ctx)


def forbid_new_processes() -> None:
    """Stack a filter on this process (filters only ever add up) that refuses new processes: a data-parallel
    worker calls it before any candidate code runs, so the candidate gets the single-process rules back."""
    lib, ctx = _filter(processes=False, sockets=True, denied=())
    _load(lib, ctx, "the worker's filter")


def load_filter(network: bool = False) -> None:
    """Load the sandbox's filter (seccomp_program's rules) into this process, where no bubblewrap applied it:
    a step of the cluster's training pod, whose container is the boundary (trainer/pod.py). Inherited by every
    thread and child; it cannot be removed. `network`: a data-parallel agent's variant."""
    lib, ctx = _filter(processes=network, sockets=network,
                       denied=tuple(n for n in DENIED_SYSCALLS if n not in PROCESS_SYSCALLS))
    _load(lib, ctx, "the sandbox's filter")


# ---- resource limits ------------------------------------------------------------------------------------

def apply_limits(as_mb: int = 0, cpu_s: int = 0, fsize_mb: int = 0, nproc: int = 0, nofile: int = 0) -> None:
    """Hard limits, set before any candidate code runs; without CAP_SYS_RESOURCE they cannot be raised."""
    def lower(kind: int, value: int) -> None:
        soft, hard = resource.getrlimit(kind)
        new = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (new, new))

    if as_mb:
        lower(resource.RLIMIT_AS, as_mb << 20)
    if cpu_s:  # SIGXCPU at the limit (reported as stage cpu), SIGKILL a second later
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        new_hard = cpu_s + 1 if hard == resource.RLIM_INFINITY else min(cpu_s + 1, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (max(1, min(cpu_s, new_hard - 1)), new_hard))
    if fsize_mb:
        lower(resource.RLIMIT_FSIZE, fsize_mb << 20)
    if nproc:
        lower(resource.RLIMIT_NPROC, nproc)
    if nofile:
        lower(resource.RLIMIT_NOFILE, nofile)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


# ---- the file system the contained process sees --------------------------------------------------------

def runtime_paths() -> list[Path]:
    """The Python runtime, read-only: the interpreter's installations (a virtualenv's python is a symlink into
    the base one), every import path, and the folders of the cambrian packages the contained program imports
    (an editable install maps them outside site-packages)."""
    import cambrian
    import cambrian.trainer

    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent.parent}
    # installed packages only: not the working directory or a source checkout that happens to be on sys.path
    paths |= {Path(p) for p in sys.path if p and Path(p).is_dir() and ({"site-packages", "dist-packages"} & set(Path(p).parts))}
    paths |= {Path(p) for p in [*cambrian.__path__, *cambrian.trainer.__path__]}
    keep = sorted({p.resolve() for p in paths if p.resolve() != Path("/")} | {p for p in paths if p != Path("/")})
    usr = Path("/usr")
    # nested paths are covered by their parent's bind; /usr is bound as a whole
    out: list[Path] = []
    for p in keep:
        if p == usr or usr in p.parents or any(q == p or q in p.parents for q in out):
            continue
        out.append(p)
    return out


def etc_files() -> list[tuple[str, str]]:
    """(host file, path inside) of the sandbox's /etc, read-only: the loader's cache, and its own hosts and
    nsswitch.conf naming only its loopback (torchrun's agent before torch 2.12 resolves "localhost" for a free
    port). bubblewrap's sandbox and the zygote's (trainer/zygote.py) both bind these."""
    cache = [("/etc/ld.so.cache", "/etc/ld.so.cache")] if Path("/etc/ld.so.cache").is_file() else []
    return cache + [(str(source), f"/etc/{name}") for name, source in SANDBOX_ETC.items()]


def gpu_devices() -> list[Path]:
    """The NVIDIA driver's device nodes (what a GPU run binds into its sandbox)."""
    return sorted(Path("/dev").glob("nvidia*"))


def gpu_present() -> bool:
    """Whether a run can have a GPU: this machine shows one (a /dev/nvidiaN node) and the installed torch was built
    with CUDA; read without importing torch, which the trusted side never does. Where the driver itself is
    broken, the contained step finds no CUDA device and trains on the CPU (training.device auto) or fails (cuda)."""
    return any(d.name[len("nvidia"):].isdigit() for d in gpu_devices()) and torch_built_with_cuda()


def torch_built_with_cuda() -> bool:
    """torch.version.cuda is not None, read from torch/version.py with Python's own parser (importing torch.version
    would import torch): a CPU-only wheel on a machine with an NVIDIA card keeps its CPU runs (and warm slots)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    try:
        tree = ast.parse((Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text())
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "cuda" and node.value is not None:
            try:
                return ast.literal_eval(node.value) is not None
            except ValueError:
                return False
    return False


def bwrap_command(input_dir: Path, scratch_dir: Path, argv: list[str], env: dict[str, str], seccomp_fd: int,
                  gpu: bool = False) -> list[str]:
    cmd = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session", "--clearenv",
           "--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "sandbox",
           "--ro-bind", "/usr", "/usr"]
    for link in ("lib", "lib64", "bin", "sbin"):
        target = Path("/") / link
        if target.is_symlink():  # merged /usr (Debian 12)
            cmd += ["--symlink", os.readlink(target), f"/{link}"]
        elif target.is_dir():
            cmd += ["--ro-bind", str(target), f"/{link}"]
    for source, dest in etc_files():
        cmd += ["--ro-bind", source, dest]
    for p in runtime_paths():
        cmd += ["--ro-bind", str(p), str(p)]
    cmd += ["--ro-bind", str(input_dir), INPUT, "--bind", str(scratch_dir), SCRATCH, "--proc", "/proc", "--dev", "/dev"]
    if gpu:  # the GPU's device nodes only; the driver's libraries are under /usr
        for dev in gpu_devices():
            cmd += ["--dev-bind", str(dev), str(dev)]
    # memory-backed folders are bounded (their pages count against no process) and /dev is read-only
    cmd += ["--size", str(SHM_BYTES), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
            "--size", str(TMP_BYTES), "--tmpfs", "/tmp", "--chdir", SCRATCH]
    for k, v in sorted(env.items()):
        cmd += ["--setenv", k, v]
    cmd += ["--seccomp", str(seccomp_fd), "--", *argv]
    return cmd


@lru_cache(maxsize=1)
def bwrap_problem() -> str | None:
    """None when bubblewrap can build the namespaces here; else the reason, for the one-line failure."""
    if not shutil.which("bwrap"):
        return "bubblewrap (bwrap) is not installed; run scripts/setup.sh (apt-get install bubblewrap)"
    try:
        probe = subprocess.run(["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bubblewrap failed to start: {exc}"
    if probe.returncode != 0:
        line = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        return f"the kernel refuses the sandbox's namespaces (user namespaces disabled?): {line}"
    return None


def require_sandbox() -> None:
    problem = bwrap_problem()
    if problem:
        raise SandboxUnavailable(problem, hint="candidate code is never run uncontained")
    seccomp_program()


def containment(sandbox: str, must: bool) -> bool:
    """Whether to use bubblewrap. `none` is for an outer boundary that already contains the run (the cluster's
    training pod); `auto` contains whenever it can, and where it cannot refuses what `must` be contained;
    `bwrap` always contains or refuses."""
    if sandbox not in ("auto", "bwrap", "none"):
        raise ConfigError(f"--sandbox (CAMBRIAN_SANDBOX) must be auto, bwrap or none, not {sandbox!r}")
    if sandbox == "none":
        return False
    problem = bwrap_problem()
    if problem and (sandbox == "bwrap" or must):
        raise SandboxUnavailable(problem, hint="candidate code is never run uncontained; install bubblewrap "
                                               "(scripts/setup.sh) or enable unprivileged user namespaces")
    return problem is None


def contained_command(input_dir: Path, scratch_dir: Path, argv: list[str], env: dict[str, str], gpu: bool = False,
                      contain: bool = True, network: bool = False) -> tuple[list[str], dict[str, str], tuple[int, ...]]:
    """The command line, its environment and the file descriptors it must inherit (the seccomp program's pipe,
    which the caller closes once the process has started). contain=False: argv as a plain child, for an outer
    boundary such as a pod. `network`: the filter of a data-parallel group's launcher (seccomp_program)."""
    if not contain:
        return argv, env, ()
    require_sandbox()
    r, w = os.pipe()
    program = seccomp_program(network)
    if len(program) > 60000:  # a pipe buffer holds 64 KiB: never block on our own write
        os.close(r)
        os.close(w)
        raise SandboxUnavailable("the seccomp program is unexpectedly large")
    os.write(w, program)
    os.close(w)
    # bwrap's own environment is minimal: its PID 1 shows it in /proc/1/environ
    return bwrap_command(input_dir, scratch_dir, argv, env, r, gpu), {"PATH": "/usr/bin:/bin"}, (r,)


def start_contained(input_dir: Path, scratch_dir: Path, argv: list[str], env: dict[str, str], log_file: Path | None,
                    contain: bool = True) -> subprocess.Popen:
    """A long-lived contained process that talks over its stdin and stdout (stderr goes to log_file, None: this
    process's stderr); its own process group, so `stop_contained` takes the whole tree."""
    full, run_env, fds = contained_command(input_dir, scratch_dir, argv, env, contain=contain)
    try:
        with open(log_file, "wb") if log_file is not None else contextlib.nullcontext() as log:
            return subprocess.Popen(full, env=run_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                    pass_fds=fds, start_new_session=True, cwd=str(scratch_dir))
    finally:
        for fd in fds:
            os.close(fd)


def stop_contained(proc: subprocess.Popen) -> int:
    """Kill the process group (bwrap leads it: with it go the PID namespace and everything inside)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return proc.wait()


def run_contained(input_dir: Path, scratch_dir: Path, argv: list[str], env: dict[str, str], wall_seconds: float,
                  log_file: Path, gpu: bool = False, contain: bool = True, network: bool = False) -> ContainedResult:
    """Run argv in the sandbox (contain=False: a plain child, for an outer boundary such as the training pod)
    and wait at most wall_seconds; at the end the whole process tree is gone. `network`: the filter of a
    data-parallel group (seccomp_program)."""
    full, run_env, fds = contained_command(input_dir, scratch_dir, argv, env, gpu, contain, network)
    started = time.monotonic()
    timed_out = False
    try:
        with open(log_file, "wb") as log:
            proc = subprocess.Popen(full, env=run_env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    pass_fds=fds, start_new_session=True, cwd=str(scratch_dir))
            try:
                proc.wait(timeout=wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                rc = stop_contained(proc)
    finally:
        for fd in fds:
            os.close(fd)
    return ContainedResult(rc, time.monotonic() - started, timed_out, file_tail(log_file))


def file_tail(path: Path, n: int = 1500) -> str:
    """The last n bytes of a log the contained process wrote (it may be huge: never read it whole)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read(n).decode("utf-8", "replace").strip()
    except OSError:
        return ""
