"""A real, local Kubernetes control plane for tests and benchmarks (no Docker, no kubelet).

etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok, all on loopback ports
chosen by the OS, built once by scripts/build-test-cluster.sh.  kwok plays the kubelets: it keeps
fake nodes (some with `nvidia.com/gpu` capacity) Ready and moves pods through the stages in
kwok-stages.yaml (Job pods finish; annotations choose exit code and termination message).

    from cambrian.testing.cluster import start_cluster
    with start_cluster() as c:                # or c = start_cluster(); ...; c.stop()
        c.kubectl("get", "nodes")
        os.environ["KUBECONFIG"] = str(c.kubeconfig)
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import yaml

from cambrian.testing.pki import Pki, generate_pki

REPO_ROOT = Path(__file__).resolve().parents[1]  # testing/cluster.py -> the repository
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-test-cluster.sh"
STAGES_FILE = Path(__file__).with_name("kwok-stages.yaml")
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
            "kubectl", "helm")
SERVICE_CIDR = "10.0.0.0/24"

# Pod annotations read by the kwok stages (put them on a Job's pod template).
ANNOTATION_EXIT_CODE = "kwok.cambrian.dev/exit-code"
ANNOTATION_TERMINATION_MESSAGE = "kwok.cambrian.dev/termination-message"
ANNOTATION_DURATION = "kwok.cambrian.dev/duration"
# Nodes kwok manages carry this annotation; GPU nodes also carry the label below.
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
GPU_NODE_LABEL = "cambrian.dev/gpu-node"


class ClusterError(RuntimeError):
    """The control plane could not be started; the message includes the component log tails."""


# --------------------------------------------------------------------------------------------
# Locating the binaries
# --------------------------------------------------------------------------------------------

def find_bin_dir() -> Path | None:
    """The directory holding the built binaries: $CAMBRIAN_CLUSTER_BIN_DIR, else the one the
    build script reports (`--print-bin-dir` builds nothing).  None when neither is known."""
    env = os.environ.get("CAMBRIAN_CLUSTER_BIN_DIR")
    if env:
        return Path(env)
    if BUILD_SCRIPT.is_file():
        out = subprocess.run(["bash", str(BUILD_SCRIPT), "--print-bin-dir"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip().splitlines()[-1])
    return None


def missing_binaries(bin_dir: Path | None) -> list[str]:
    if bin_dir is None:
        return list(BINARIES)
    return [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]


def unavailable_reason() -> str | None:
    """Why start_cluster() cannot run here (for pytest skips), or None when it can."""
    bin_dir = find_bin_dir()
    missing = missing_binaries(bin_dir)
    if missing:
        return (f"control-plane binaries not built ({', '.join(missing)} missing in {bin_dir}); "
                f"run scripts/build-test-cluster.sh")
    return None


# --------------------------------------------------------------------------------------------
# Pure builders: ports, kubeconfig, node manifests, command lines
# --------------------------------------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all sockets held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def kubeconfig_dict(server: str, pki: Pki, name: str = "cambrian-test") -> dict:
    b64 = lambda p: base64.b64encode(Path(p).read_bytes()).decode()  # noqa: E731
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": name, "preferences": {},
        "clusters": [{"name": name, "cluster": {
            "server": server, "certificate-authority-data": b64(pki.ca_cert)}}],
        "users": [{"name": f"{name}-admin", "user": {
            "client-certificate-data": b64(pki.admin_cert),
            "client-key-data": b64(pki.admin_key)}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{name}-admin"}}],
    }


def node_manifest(name: str, gpus: int = 0, cpu: str = "32", memory: str = "256Gi") -> dict:
    """A Node kwok will manage; status.capacity is kept by kwok's node-initialize stage."""
    capacity = {"cpu": cpu, "memory": memory, "pods": "110"}
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "type": "kwok"}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
        labels[GPU_NODE_LABEL] = "true"
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels,
                     "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1],
                                     "node.alpha.kubernetes.io/ttl": "0"}},
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int


def audit_policy(users: Sequence[str]) -> dict:
    """An audit policy that logs the requests of `users` (verb, resource, response code; no bodies) and nothing
    else, once per request (a watch when it opens): what a benchmark needs to count one client's requests."""
    return {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
            "rules": [{"level": "Metadata", "users": list(users)}, {"level": "None"}]}


def component_commands(bin_dir: Path, work: Path, pki: Pki, ports: Ports,
                       kubeconfig: Path, audit_users: Sequence[str] = ()) -> dict[str, list[str]]:
    """Command lines of every component, in start order. `audit_users`: the API server writes an audit log
    of their requests to work/audit.log (JSON lines)."""
    b = lambda n: str(bin_dir / n)  # noqa: E731
    audit = []
    if audit_users:
        (work / "audit-policy.yaml").write_text(yaml.safe_dump(audit_policy(audit_users)))
        audit = [f"--audit-policy-file={work / 'audit-policy.yaml'}", f"--audit-log-path={work / 'audit.log'}",
                 "--audit-log-format=json", "--audit-log-mode=blocking", "--audit-log-maxsize=0"]
    etcd_url = f"http://127.0.0.1:{ports.etcd_client}"
    peer_url = f"http://127.0.0.1:{ports.etcd_peer}"
    return {
        "etcd": [
            b("etcd"), "--name=cambrian-test", f"--data-dir={work / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=cambrian-test={peer_url}", "--unsafe-no-fsync",
            "--log-level=warn"],
        "kube-apiserver": [
            b("kube-apiserver"), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={ports.apiserver}",
            f"--tls-cert-file={pki.server_cert}", f"--tls-private-key-file={pki.server_key}",
            f"--client-ca-file={pki.ca_cert}",
            # published in kube-system/extension-apiserver-authentication; without it KCM and the
            # scheduler log "missing content for CA bundle" errors continuously
            f"--requestheader-client-ca-file={pki.ca_cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            # a loopback address is invalid in Endpoints: skip the kubernetes service reconciler
            "--endpoint-reconciler-type=none",
            "--profiling=false", "--v=1", *audit],
        "kube-controller-manager": [
            b("kube-controller-manager"), f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1",
            f"--secure-port={ports.controller_manager}",
            f"--root-ca-file={pki.ca_cert}",
            f"--service-account-private-key-file={pki.sa_key}",
            "--use-service-account-credentials=false", "--profiling=false", "--v=1"],
        "kube-scheduler": [
            b("kube-scheduler"), f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1",
            f"--secure-port={ports.scheduler}", "--profiling=false", "--v=1"],
        "kwok": [
            b("kwok"), f"--kubeconfig={kubeconfig}", f"--config={STAGES_FILE}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION[0]}={KWOK_NODE_ANNOTATION[1]}",
            "--cidr=10.0.1.0/24", "--node-ip=10.0.0.2",
            f"--server-address=127.0.0.1:{ports.kwok}"],
    }


# --------------------------------------------------------------------------------------------
# Running processes
# --------------------------------------------------------------------------------------------

def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """preexec_fn (Linux): `sig` to this child when the test process dies without running its clean-up
    (a timeout's SIGTERM skips `finally`)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Cluster:
    kubeconfig: Path
    bin_dir: Path
    work_dir: Path
    server: str
    pki: Pki
    ports: Ports
    gpu_nodes: list[str] = field(default_factory=list)
    cpu_nodes: list[str] = field(default_factory=list)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    keep_work_dir: bool = False
    audit_log: Path | None = None  # start_cluster(audit_users=...): the API server's audit log of their requests
    _stopped: bool = False

    # -- helpers for callers ------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG and the bin dir first on PATH (for kubectl/helm/kopf)."""
        e = dict(os.environ)
        e["KUBECONFIG"] = str(self.kubeconfig)
        e["PATH"] = f"{self.bin_dir}{os.pathsep}{e.get('PATH', '')}"
        return e

    def run_tool(self, tool: str, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / tool), *args]
        out = subprocess.run(cmd, input=input, capture_output=True, text=True,
                             env=self.env(), timeout=timeout)
        if check and out.returncode != 0:
            raise subprocess.CalledProcessError(out.returncode, cmd, out.stdout, out.stderr)
        return out

    def kubectl(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run_tool("kubectl", *args, **kw)

    def helm(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run_tool("helm", *args, **kw)

    def get_json(self, *args: str) -> dict:
        """`kubectl get ARGS -o json` parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, manifest: dict | list | str) -> None:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump_all(
            manifest if isinstance(manifest, list) else [manifest])
        self.kubectl("apply", "-f", "-", input=text)

    def bound_claim(self, namespace: str, claim: str, path: Path) -> str:
        """Claim NAMESPACE/CLAIM bound to a 1 GiB hostPath volume at `path` (this control plane has no
        provisioner; the pod runtime harness maps the claim to that folder). Returns the volume's name,
        which the caller deletes: volumes are cluster-scoped and outlive the namespace."""
        path.mkdir(parents=True, exist_ok=True)
        pv = f"pv-{namespace}-{claim}"[:253]
        self.apply([{"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                     "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                              "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(path)},
                              "claimRef": {"namespace": namespace, "name": claim}}},
                    {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                     "metadata": {"name": claim, "namespace": namespace},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                              "storageClassName": "", "volumeName": pv}}])
        return pv

    @contextlib.contextmanager
    def activated(self):
        """Within the block, os.environ has KUBECONFIG and PATH of env() (for in-process
        clients such as kopf.testing.KopfRunner or kubernetes.config.load_kube_config())."""
        saved = {k: os.environ.get(k) for k in ("KUBECONFIG", "PATH")}
        os.environ.update({k: v for k, v in self.env().items() if k in saved})
        try:
            yield self
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def api_client(self):
        """A kubernetes.client.ApiClient for this cluster (import deferred: heavy)."""
        from kubernetes import config
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def log_path(self, component: str) -> Path:
        return self.work_dir / "logs" / f"{component}.log"

    def logs(self, lines: int = 40) -> str:
        parts = []
        for name, proc in self.processes.items():
            state = "running" if proc.poll() is None else f"exited {proc.returncode}"
            parts.append(f"----- {name} (pid {proc.pid}, {state}) -----\n"
                         f"{_tail(self.log_path(name), lines)}")
        return "\n".join(parts)

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = 60,
                 interval: float = 0.5) -> None:
        """Poll predicate until true; raise ClusterError with the component logs otherwise."""
        deadline = time.monotonic() + timeout
        last_exc: Exception | None = None
        while time.monotonic() < deadline:
            dead = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
            if dead:
                raise ClusterError(f"waiting for {what}: component(s) exited {dead}\n{self.logs()}")
            try:
                if predicate():
                    return
                last_exc = None
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                last_exc = exc
            time.sleep(interval)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}"
                           f"{f' (last error: {last_exc})' if last_exc else ''}\n{self.logs()}")

    # -- lifecycle ----------------------------------------------------------------------------
    def _start(self, name: str, cmd: list[str]) -> None:
        log = open(self.log_path(name), "wb")
        try:
            self.processes[name] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.work_dir, preexec_fn=die_with_parent)
        finally:
            log.close()

    def stop(self) -> None:
        """Stop every component (by its own PID, newest first) and remove the work dir."""
        if self._stopped:
            return
        self._stopped = True
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        if not self.keep_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _https_ok(url: str, ctx: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=3) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_cluster(bin_dir: Path | str | None = None, *, gpu_nodes: int = 2, gpus_per_node: int = 8,
                  cpu_nodes: int = 1, work_dir: Path | str | None = None,
                  timeout: float = 180, keep_work_dir: bool = False, audit_users: Sequence[str] = ()) -> Cluster:
    """Start the control plane and kwok nodes; returns when every part answers.

    gpu_nodes nodes named kwok-gpu-<i> carry `nvidia.com/gpu: gpus_per_node` (label
    cambrian.dev/gpu-node=true); cpu_nodes nodes kwok-cpu-<i> carry no GPU.  On failure every
    started process is stopped and ClusterError carries the component log tails.
    `audit_users`: the API server logs their requests to Cluster.audit_log (audit_policy()).
    """
    bin_dir = Path(bin_dir) if bin_dir else find_bin_dir()
    missing = missing_binaries(bin_dir)
    if missing:
        raise ClusterError(f"missing binaries {missing} in {bin_dir}; run {BUILD_SCRIPT}")
    kwargs = dict(gpu_nodes=gpu_nodes, gpus_per_node=gpus_per_node, cpu_nodes=cpu_nodes,
                  timeout=timeout, keep_work_dir=keep_work_dir, audit_users=tuple(audit_users))
    try:
        return _start_once(bin_dir, work_dir=work_dir, **kwargs)
    except ClusterError as exc:
        # Ports are picked free but bound later; another process may win one in between.
        if "address already in use" not in str(exc) or work_dir is not None:
            raise
        return _start_once(bin_dir, work_dir=None, **kwargs)


def _start_once(bin_dir: Path, *, gpu_nodes: int, gpus_per_node: int, cpu_nodes: int,
                work_dir: Path | str | None, timeout: float, keep_work_dir: bool,
                audit_users: Sequence[str] = ()) -> Cluster:
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="cambrian-cluster-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    pki = generate_pki(work / "pki")
    ports = Ports(*free_ports(6))
    server = f"https://127.0.0.1:{ports.apiserver}"
    kubeconfig = work / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(kubeconfig_dict(server, pki)))
    kubeconfig.chmod(0o600)
    cluster = Cluster(kubeconfig=kubeconfig, bin_dir=bin_dir, work_dir=work, server=server,
                      pki=pki, ports=ports, keep_work_dir=keep_work_dir,
                      gpu_nodes=[f"kwok-gpu-{i}" for i in range(gpu_nodes)],
                      cpu_nodes=[f"kwok-cpu-{i}" for i in range(cpu_nodes)])
    atexit.register(cluster.stop)
    try:
        if audit_users:
            cluster.audit_log = work / "audit.log"
        _bring_up(cluster, component_commands(bin_dir, work, pki, ports, kubeconfig, audit_users),
                  gpus_per_node, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _bring_up(c: Cluster, cmds: dict[str, list[str]], gpus_per_node: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    left = lambda: max(1.0, deadline - time.monotonic())  # noqa: E731
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
    admin = ssl.create_default_context(cafile=str(c.pki.ca_cert))
    admin.load_cert_chain(str(c.pki.admin_cert), str(c.pki.admin_key))

    c._start("etcd", cmds["etcd"])

    def etcd_healthy() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{c.ports.etcd_client}/health",
                                    timeout=3) as r:
            return json.loads(r.read()).get("health") == "true"
    c.wait_for("etcd /health", etcd_healthy, left())

    c._start("kube-apiserver", cmds["kube-apiserver"])
    c.wait_for("kube-apiserver /readyz", lambda: _https_ok(f"{c.server}/readyz", admin), left())

    for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
        c._start(name, cmds[name])
    c.wait_for("kube-scheduler /healthz", lambda: _https_ok(
        f"https://127.0.0.1:{c.ports.scheduler}/healthz", insecure), left())
    c.wait_for("kube-controller-manager /healthz", lambda: _https_ok(
        f"https://127.0.0.1:{c.ports.controller_manager}/healthz", insecure), left())

    nodes = [node_manifest(n, gpus=gpus_per_node) for n in c.gpu_nodes]
    nodes += [node_manifest(n) for n in c.cpu_nodes]
    if nodes:
        # create (not apply): a Node's status is only taken from the object on create.
        c.kubectl("create", "-f", "-", input=yaml.safe_dump_all(nodes))

    def nodes_ready() -> bool:
        items = c.get_json("nodes", "-l", "type=kwok")["items"]
        ready = [n for n in items if any(
            cond["type"] == "Ready" and cond["status"] == "True"
            for cond in n.get("status", {}).get("conditions", []))
            and not any(t["key"].startswith("node.kubernetes.io/not-ready")
                        for t in n.get("spec", {}).get("taints", []) or [])]
        return len(ready) == len(nodes)
    c.wait_for(f"{len(nodes)} kwok nodes Ready", nodes_ready, left(), interval=1)

    # Pods are refused until the service-account controller created the namespace's "default".
    c.wait_for("default ServiceAccount", lambda: c.kubectl(
        "get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
        left(), interval=1)


# --------------------------------------------------------------------------------------------
# One cluster per process, shared by every test suite's fixture (starting one takes ~10-30 s)
# --------------------------------------------------------------------------------------------

_shared: Cluster | None = None


def shared_cluster(**kwargs) -> Cluster:
    """The process-wide cluster, started on first use with start_cluster(**kwargs)."""
    global _shared
    if _shared is None or _shared._stopped:
        _shared = start_cluster(**kwargs)
    return _shared


def stop_shared_cluster() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        _shared = None
