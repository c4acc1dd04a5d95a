"""The zygote: a warm pool's trusted process that has imported torch and the project once (contained.preload)
and forks one child per step; each child contains itself with the operating system before any candidate code
runs, so a step pays a fork, not an interpreter start and a torch import (trainer/warm.py WarmPool).

    python -I -B -m cambrian.trainer.zygote PARENT_PID POOL   (started by Zygote: minimal environment, cwd /;
                                                             POOL only names it, as a warm worker's command line)

It never opens candidate data: it reads requests ({"argv", "input", "scratch", "log", "env"}: the contained
program's arguments, the step's two folders, its log file and environment) on stdin and answers on stdout
with {"pid"} and then {"exit"}; {"kill": true} while a step runs kills it. Each step's processes:
- C1, the zygote's child: a new session, dies with the zygote (PR_SET_PDEATHSIG), opens the step's log as
  stdout/stderr and /dev/null as stdin, closes every other descriptor, unshares user (our uid and gid mapped to
  nobody, setgroups denied), PID, network, IPC, UTS and cgroup namespaces, forks C2 and becomes a small reaper
  (exec of the interpreter with REAPER: the torch-sized image is not kept twice more) that exits with C2's status;
- C2, PID 1 of the new PID namespace, dies with C1: its own mount namespace, a new root on tmpfs with the same
  read-only runtime binds as bubblewrap's (sandbox.runtime_paths, /usr and its links, sandbox.etc_files), /input
  read-only, /scratch writable, size-bounded tmpfs /tmp and /dev/shm, a read-only /dev as bubblewrap's --dev
  (null, zero, full, random, urandom, tty, a private devpts), a fresh /proc of the namespace (its sys,
  sysrq-trigger, irq and bus read-only), the root itself read-only; pivot_root and the old root detached; the
  user namespace's max_user_namespaces set to 0 (as bubblewrap's --disable-userns). It forks C3 and becomes the
  namespace's reaper: when it exits, the kernel kills every process left in the namespace (whole-tree kill);
- C3, the worker: its environment replaced by the step's, cwd /scratch, every capability dropped (bounding,
  ambient, effective, permitted, inheritable), no_new_privs, then contained.main with `--seccomp`: the
  sandbox's rlimits (sandbox.apply_limits) and seccomp filter (sandbox.load_filter, which refuses new processes,
  namespaces, mounts, ptrace and non-Unix sockets) before the step's command runs.
The exit code, the wall-time kill and the log tail reach the caller as the bubblewrap path's ContainedResult.
At start the pool has the zygote run a probe step (the whole containment, no command): unless it passes, the
zygote is not `ready` and the pool uses bubblewrap sandboxes instead (fail closed: a step never runs with less).
Memory: C1's and C2's reapers are small fresh interpreters; the zygote itself is left out of the runner's memory
watchdog (trainer/warm.py SPARES), its children are not.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from cambrian.trainer.sandbox import (INPUT, NOBODY, SCRATCH, SHM_BYTES, TMP_BYTES, ContainedResult,
                                      etc_files, file_tail, runtime_paths, stop_contained)

READY_SECONDS = 300.0
KILL_GRACE_SECONDS = 30.0

# ---- the kernel's interface (ctypes: Python 3.11 has no os.unshare, pivot_root or mount_setattr) ----------

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 1, 24, 38, 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
SYSCALLS = {"x86_64": {"pivot_root": 155, "mount_setattr": 442, "capset": 126},
            "aarch64": {"pivot_root": 41, "mount_setattr": 442, "capset": 91}}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _check(rc: int, what: str) -> None:
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _syscall(name: str, *args) -> None:
    numbers = SYSCALLS.get(platform.machine())
    if numbers is None:
        raise OSError(errno.ENOSYS, f"{name}: no syscall number for {platform.machine()}")
    _check(_libc.syscall(ctypes.c_long(numbers[name]), *args), name)


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def restrict(path: str, recursive: bool, writable: bool = False) -> None:
    """The mount at `path` (and with `recursive` every mount under it) nosuid, nodev and unless `writable`
    read-only; flags a more privileged namespace locked stay as they are."""
    attr = _MountAttr(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (0 if writable else MOUNT_ATTR_RDONLY), 0, 0, 0)
    _syscall("mount_setattr", ctypes.c_int(AT_FDCWD), path.encode(), ctypes.c_uint(AT_RECURSIVE if recursive else 0),
             ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))


def prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                       ctypes.c_ulong(0)), f"prctl {option}")


def drop_capabilities() -> None:
    """Every capability gone: the bounding set (needs CAP_SETPCAP, so first), the ambient set, then effective,
    permitted and inheritable."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    data = (_CapData * 2)()
    _syscall("capset", ctypes.byref(_CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)), data)


# ---- the child: C1, C2, C3 (see the module's docstring) -------------------------------------------------

# C1's and C2's program once the step's processes exist: reap every child, exit with the one's status.
REAPER = ("# cambrian.trainer.zygote reaper\n"
          "import os, sys\n"
          "pid = int(sys.argv[1])\n"
          "while True:\n"
          "    try:\n"
          "        p, st = os.wait()\n"
          "    except ChildProcessError:\n"
          "        os._exit(125)\n"
          "    if p == pid:\n"
          "        code = os.waitstatus_to_exitcode(st)\n"
          "        os._exit(code if code >= 0 else 128 - code)\n")


def _become_reaper(pid: int, keep: tuple[int, ...] = ()) -> None:
    for fd in keep:
        os.set_inheritable(fd, True)
    os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", REAPER, str(pid)])


def _die_with_parent(parent_alive) -> None:
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if not parent_alive():  # it died before the line above: nobody would kill us
        os._exit(124)


def _child(request: dict, zygote: int) -> None:
    """C1. Never returns."""
    try:
        os.setsid()
        _die_with_parent(lambda: os.getppid() == zygote)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 1 << 20)  # close_range(2) where the kernel has it
        uid, gid = os.getuid(), os.getgid()
        unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP)
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{NOBODY} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{NOBODY} {gid} 1")
        alive_r, alive_w = os.pipe()  # C2 reads EOF only once C1 is gone
        pid = os.fork()
        if pid == 0:
            os.close(alive_w)
            _init(request, alive_r)
        os.close(alive_r)
        _become_reaper(pid, keep=(alive_w,))
    except BaseException as exc:  # noqa: BLE001 - whatever failed, the step did not run: say why and end
        _fail("the zygote's child could not contain itself", exc)


def _init(request: dict, alive_r: int) -> None:
    """C2, PID 1 of the step's namespace. Never returns."""
    try:
        _die_with_parent(lambda: not select.select([alive_r], [], [], 0)[0])
        os.close(alive_r)
        unshare(CLONE_NEWNS)
        _check(_libc.sethostname(b"sandbox", ctypes.c_size_t(7)), "sethostname")
        build_root(Path(request["input"]), Path(request["scratch"]))
        pid = os.fork()
        if pid == 0:
            _worker(request)
        _become_reaper(pid)
    except BaseException as exc:  # noqa: BLE001
        _fail("the step's sandbox could not be built", exc)


def build_root(input_dir: Path, scratch_dir: Path) -> None:
    """The file system of bubblewrap's sandbox (sandbox.bwrap_command), then pivot_root into it. As bubblewrap
    does: a tmpfs on /tmp becomes the root for a moment, with the old root under /oldroot, so every source is
    reachable (under /tmp too) while the new root is built under /newroot."""
    binds: list[tuple[str, str, bool]] = [("/usr", "/usr", True)]
    links: list[tuple[str, str]] = []
    for link in ("lib", "lib64", "bin", "sbin"):
        target = Path("/") / link
        if target.is_symlink():
            links.append((os.readlink(target), f"/{link}"))
        elif target.is_dir():
            binds.append((str(target), f"/{link}", True))
    binds += [(source, dest, True) for source, dest in etc_files()]
    binds += [(str(p), str(p), True) for p in runtime_paths()]
    binds += [(str(input_dir), INPUT, True), (str(scratch_dir), SCRATCH, False)]
    binds = [(os.path.realpath(src), dest, ro) for src, dest, ro in binds]  # resolved in the host's view
    devices = [d for d in ("null", "zero", "full", "random", "urandom", "tty") if Path("/dev", d).exists()]

    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates back to the host
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m")
    os.chdir("/tmp")
    os.mkdir("newroot")
    os.mkdir("oldroot")
    _syscall("pivot_root", b"/tmp", b"/tmp/oldroot")
    os.chdir("/")
    new = "/newroot"
    mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m")
    for src, dest, ro in binds:
        target = new + dest
        if os.path.isdir("/oldroot" + src):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "w").close()
        mount("/oldroot" + src, target, None, MS_BIND | MS_REC)
        restrict(target, recursive=True, writable=not ro)
    for to, link in links:
        os.symlink(to, new + link)
    dev = new + "/dev"
    os.makedirs(dev)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=0755,size=64k")
    for d in devices:
        open(f"{dev}/{d}", "w").close()
        mount(f"/oldroot/dev/{d}", f"{dev}/{d}", None, MS_BIND)
    for name, to in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                     ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):
        os.symlink(to, f"{dev}/{name}")
    os.mkdir(f"{dev}/pts")  # a private instance, as bubblewrap's --dev
    mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
    os.mkdir(f"{dev}/shm")
    mount("tmpfs", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={SHM_BYTES}")
    restrict(dev, recursive=False)
    os.makedirs(new + "/tmp")
    mount("tmpfs", new + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={TMP_BYTES}")
    os.makedirs(new + "/proc")
    mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # no nested user namespaces (bubblewrap's --disable-userns), beside the filter refusing unshare and clone
    Path(new, "proc/sys/user/max_user_namespaces").write_text("0")
    for sub in ("sys", "sysrq-trigger", "irq", "bus"):  # as bubblewrap's --proc: the kernel's knobs read-only
        path = f"{new}/proc/{sub}"
        if os.path.exists(path):
            mount(path, path, None, MS_BIND | MS_REC)
            restrict(path, recursive=True)
    restrict(new, recursive=False)
    os.chdir(new)
    _syscall("pivot_root", b".", b".")
    _check(_libc.umount2(b".", MNT_DETACH), "umount the old root")  # the host's tree, gone from this namespace
    os.chdir("/")


def _worker(request: dict) -> None:
    """C3: the step itself, contained. Never returns."""
    code = 4
    try:
        _die_with_parent(lambda: os.getppid() == 1)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(SCRATCH)
        if request.get("threads"):  # the intra-op threads a fresh process would have (a config may set its own)
            import torch

            torch.set_num_threads(int(request["threads"]))
        drop_capabilities()
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        if request.get("probe"):  # the start-up check: everything but a command
            from cambrian.trainer.sandbox import apply_limits, load_filter

            apply_limits(nofile=1024)
            load_filter()
            os._exit(0)
        from cambrian.trainer import contained

        sys.argv = ["cambrian.trainer.contained", *request["argv"]]
        code = contained.main([*request["argv"], "--seccomp"])  # rlimits, then the filter, then the command
    except BaseException as exc:  # noqa: BLE001
        _fail("the step's worker could not start", exc)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _fail(what: str, exc: BaseException) -> None:
    try:
        os.write(2, f"zygote: {what}: {type(exc).__name__}: {exc}\n".encode())
    finally:
        os._exit(126)


# ---- the zygote process ------------------------------------------------------------------------------------

def _reply(out, message: dict) -> None:
    out.write((json.dumps(message) + "\n").encode())


def serve(parent: int) -> None:
    """The zygote's loop: preload, probe, then one step at a time."""
    from cambrian.trainer.contained import preload
    from cambrian.trainer.sandbox import _libseccomp

    _die_with_parent(lambda: os.getppid() == parent)
    os.chdir("/")
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    import torch

    # OpenMP is not fork-safe: once this process has run a parallel region, a child's first one never returns
    # (a step training on 2 threads hung). So the zygote runs single-threaded and each step starts with the
    # default a fresh interpreter in the sandbox would pick (the same environment: OMP_NUM_THREADS or the cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    preload()
    _libseccomp()  # loaded here: a child after pivot_root finds it the same way, but need not
    runtime_paths()
    me = os.getpid()
    while True:
        line = requests.readline()
        if not line:
            return
        request = {**json.loads(line), "threads": threads}
        pid = os.fork()
        if pid == 0:
            requests.close()
            replies.close()
            _child(request, me)
        pidfd = os.pidfd_open(pid)
        _reply(replies, {"pid": pid})
        while True:
            ready, _, _ = select.select([requests, pidfd], [], [])
            if pidfd in ready:
                _, status = os.waitpid(pid, 0)
                os.close(pidfd)
                _reply(replies, {"exit": os.waitstatus_to_exitcode(status)})
                break
            line = requests.readline()
            if not line or json.loads(line).get("kill"):  # not yet reaped: the pid is still this child's
                os.kill(pid, signal.SIGKILL)
                if not line:
                    os.waitpid(pid, 0)
                    return


# ---- the trusted side: the pool's handle ---------------------------------------------------------------------

class Zygote:
    """A running zygote (the pool owns it). `ready` once preloaded and probed; `run` a step in a child."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root = root
        self.probe_in, self.probe_out = root / "zygote-probe-in", root / "zygote-probe-out"
        for folder in (self.probe_in, self.probe_out):
            folder.mkdir(parents=True, exist_ok=True)
        with open(root / "zygote.log", "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-I", "-B", "-m", "cambrian.trainer.zygote", str(os.getpid()),
                                          str(root)],
                                         env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         bufsize=0, start_new_session=True, cwd="/")
        self.pid = self.proc.pid
        self._ready: bool | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self, seconds: float = READY_SECONDS) -> bool:
        """Preloaded and its probe step (the whole containment, no command) passed; False: not usable."""
        if self._ready is None:
            res = self._step({"probe": True, "input": str(self.probe_in), "scratch": str(self.probe_out),
                              "log": str(self.root / "zygote-probe.log"), "env": {}}, seconds, seconds)
            self._ready = res.returncode == 0 and not res.timed_out
        return self._ready and self.alive()

    def problem(self) -> str:
        return file_tail(self.root / "zygote-probe.log") or file_tail(self.root / "zygote.log") or "no output"

    def run(self, request: dict, wall_seconds: float) -> ContainedResult:
        return self._step(request, wall_seconds, KILL_GRACE_SECONDS)

    def _read(self, seconds: float | None) -> dict | None:
        """The zygote's next message; None after `seconds`; {} when it is gone."""
        ready, _, _ = select.select([self.proc.stdout], [], [], seconds)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else {}

    def _step(self, request: dict, wall_seconds: float, start_seconds: float) -> ContainedResult:
        started = time.monotonic()
        timed_out = False
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
        except OSError:
            pass
        message = self._read(start_seconds)  # {"pid": n} once forked (the first, once preloaded)
        while message:
            if "exit" in message:
                break
            left = wall_seconds - (time.monotonic() - started)
            message = self._read(max(left, 0.0)) if left > 0 else None
            if message is None:  # the wall-time limit: the zygote kills the step's tree
                timed_out = True
                try:
                    self.proc.stdin.write(b'{"kill": true}\n')
                except OSError:
                    pass
                message = self._read(KILL_GRACE_SECONDS)
                if message is None:  # the zygote does not answer: it goes, and its children with it
                    self.close()
                    message = {}
        if not message or "exit" not in message:  # the zygote died: its step died with it (PR_SET_PDEATHSIG)
            self.close()
            rc = -signal.SIGKILL
        else:
            rc = int(message["exit"])
        log = Path(request["log"])
        return ContainedResult(rc, time.monotonic() - started, timed_out, file_tail(log))

    def close(self) -> None:
        stop_contained(self.proc)  # its process group: the zygote and, by PR_SET_PDEATHSIG, any step it runs
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class ZygoteStep:
    """A step the pool handed out on the zygote path: `_Contained.warm` for it (trainer/warm.py release)."""

    kind = "zygote"  # the metrics' `sandbox`

    def __init__(self, zygote: Zygote, step):
        self.zygote, self.step = zygote, step

    def release(self, command: str, wall_seconds: float, log_file: Path) -> ContainedResult:
        s = self.step
        argv = s.argv(command, cpu_only=True)[3:]  # without `python -m cambrian.trainer.contained`
        return self.zygote.run({"argv": argv, "input": str(s.input), "scratch": str(s.scratch), "log": str(log_file),
                                "env": s.environment()}, wall_seconds)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
