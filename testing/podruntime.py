"""A container runtime for the test control plane, which has none: kwok marks pods Running and this
harness runs what they say, on the host, exactly as written in the pod.

    with PodRuntime(cluster, ["ns-a", "ns-b"], workdir, deployments=True) as rt:
        ...                               # Job pods run to completion; Deployment pods keep running

- Job pods (owned by a Job): init containers, then the containers, once (each one's output in
  <workdir>/pods/<pod>/<container>.log); the first container's
  termination-message file is handed back to kwok through the pod annotations (testing/kwok-stages.yaml),
  so the pod finishes with the real exit code and termination message.
- Long-lived pods (owned by a ReplicaSet, i.e. a Deployment), with deployments=True: each container
  runs as a host process until the pod goes away or the harness stops; its exit code is recorded.

How a pod becomes a host process, as a kubelet would set it up:
- command + args as written (`cambrian`/`python` resolve to this interpreter's environment);
- env: `value`, `valueFrom.fieldRef` (metadata.name/namespace/uid/labels/annotations, spec.nodeName,
  spec.serviceAccountName, status.hostIP/podIP), `configMapKeyRef`, `secretKeyRef`, and `envFrom` a
  Secret's or ConfigMap's keys; nothing else
  of the host's environment leaks in but PATH and the locale;
- volumes become host folders (configMap and secret volumes filled from the objects, with `items`;
  emptyDir empty; persistentVolumeClaim the bound PersistentVolume's hostPath/local path), and every
  container path in the command line or env that lies under a mount is rewritten to its host folder (a
  folder that only holds mounts becomes a folder of links to theirs);
- the pod's own network namespace becomes free loopback ports: every containerPort is mapped to a
  host port, in arguments and env values (`8080`, `:8080`, `:8080/`), and 0.0.0.0 becomes 127.0.0.1;
- a pod that mounts its service-account token (automountServiceAccountToken, default true) gets a
  token from the TokenRequest API bound to the pod (as the kubelet asks for one), written where a
  pod finds it and into a kubeconfig with the cluster CA ($KUBECONFIG), so the pod's API calls carry
  its ServiceAccount's RBAC and nothing more. Pods that do not mount it get no credentials at all.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import yaml

from cambrian.testing.cluster import ANNOTATION_DURATION, ANNOTATION_EXIT_CODE, ANNOTATION_TERMINATION_MESSAGE

VENV_BIN = Path(sys.executable).parent
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _owner_kind(pod: dict) -> str | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("kind")
    return None


def field_ref(pod: dict, path: str) -> str:
    """The value of a downward-API fieldPath, as the kubelet resolves it."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
              "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
              "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
              "status.hostIP": status.get("hostIP"), "status.podIP": status.get("podIP")}
    if path not in simple:
        raise ValueError(f"fieldRef {path!r} is not supported by the test pod runtime")
    return str(simple[path] or "")


def service_account_kubeconfig(cluster, namespace: str, service_account: str, path: Path,
                               bound_pod: dict | None = None, duration: str = "2h") -> Path:
    """A kubeconfig that authenticates as NAMESPACE/SERVICE_ACCOUNT with a TokenRequest token (bound to
    the pod when given, as the kubelet's projected token is) and trusts the cluster CA."""
    args = ["create", "token", service_account, "-n", namespace, f"--duration={duration}"]
    if bound_pod is not None:
        args += ["--bound-object-kind=Pod", f"--bound-object-name={bound_pod['metadata']['name']}",
                 f"--bound-object-uid={bound_pod['metadata']['uid']}"]
    token = cluster.kubectl(*args).stdout.strip()
    ca = base64.b64encode(Path(cluster.pki.ca_cert).read_bytes()).decode()
    user = f"system:serviceaccount:{namespace}:{service_account}"
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "in-cluster", "preferences": {},
           "clusters": [{"name": "in-cluster", "cluster": {"server": cluster.server, "certificate-authority-data": ca}}],
           "users": [{"name": user, "user": {"token": token}}],
           "contexts": [{"name": "in-cluster", "context": {"cluster": "in-cluster", "user": user, "namespace": namespace}}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


class PodRuntime:
    """Watches namespaces for Running pods and runs their containers on the host (module docstring)."""

    def __init__(self, cluster, namespaces: str | Iterable[str], workdir: Path, workers: int = 2,
                 jobs: bool = True, deployments: bool = False):
        self.c, self.work = cluster, Path(workdir)
        self.namespaces = [namespaces] if isinstance(namespaces, str) else list(namespaces)
        self.jobs, self.deployments = jobs, deployments
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.seen: set[str] = set()
        self.runs: list[dict] = []          # finished Job pods
        self.errors: list[str] = []         # the harness's own failures (reported by tests)
        self.services: dict[str, dict] = {}  # long-lived pods by name: processes, ports, logs, exit codes
        self._world_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "PodRuntime":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        self.pool.shutdown(wait=True, cancel_futures=True)
        for name in list(self.services):
            self._stop_service(name)

    # -- queries for tests ------------------------------------------------------------------------
    def service(self, prefix: str) -> dict | None:
        """The long-lived pod whose name starts with prefix (the newest), or None."""
        found = [s for n, s in self.services.items() if n.startswith(prefix)]
        return found[-1] if found else None

    def log(self, name: str) -> str:
        """Everything the long-lived pod's containers wrote so far."""
        s = self.services[name]
        return "".join(Path(p).read_text(errors="replace") for p in s["logs"] if Path(p).is_file())

    def exited(self, name: str) -> dict[str, int]:
        """{container: exit code} of the long-lived pod's containers that have stopped."""
        return {c: p.returncode for c, p in self.services[name]["procs"].items() if p.poll() is not None}

    # -- the watch loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            live: set[str] = set()
            for ns in self.namespaces:
                try:
                    pods = json.loads(self.c.kubectl("get", "pods", "-n", ns, "-o", "json", check=False).stdout
                                      or '{"items": []}')["items"]
                except (ValueError, subprocess.SubprocessError):  # a slow API server: try again next round
                    continue
                for pod in pods:
                    live.add(pod["metadata"]["name"])
                    self._consider(pod)
            for name in list(self.services):  # a deleted pod's processes stop, as its containers would
                if name not in live and not self.services[name].get("stopped"):
                    self._stop_service(name)
            self._stop.wait(0.5)

    def _consider(self, pod: dict) -> None:
        meta = pod["metadata"]
        if meta["uid"] in self.seen or meta.get("deletionTimestamp"):
            return
        if (pod.get("status") or {}).get("phase") != "Running":
            return
        kind = _owner_kind(pod)
        if kind == "Job" and self.jobs and ANNOTATION_EXIT_CODE not in (meta.get("annotations") or {}):
            self.seen.add(meta["uid"])
            self.pool.submit(self._safely, self.run_job_pod, pod)
        elif kind == "ReplicaSet" and self.deployments:
            self.seen.add(meta["uid"])
            self._safely(self.start_service_pod, pod)

    def _safely(self, fn, pod: dict) -> None:
        try:
            fn(pod)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(f"{pod['metadata']['name']}: {type(exc).__name__}: {exc}")

    # -- setting a pod up ---------------------------------------------------------------------------
    def _get(self, kind: str, name: str, namespace: str | None) -> dict:
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        return json.loads(self.c.kubectl(*args).stdout)

    def _configmap(self, name: str, namespace: str, wait_s: float = 30.0) -> dict:
        """A configMap volume's ConfigMap. A kubelet retries the mount until it exists: the operator creates a
        training Job's ConfigMap beside the Job, not before it."""
        deadline = time.monotonic() + wait_s
        while True:
            r = self.c.kubectl("get", "configmap", name, "-n", namespace, "-o", "json", check=False)
            if r.returncode == 0:
                return json.loads(r.stdout)
            if "NotFound" not in r.stderr or time.monotonic() > deadline:
                raise RuntimeError(f"configmap {namespace}/{name}: {r.stderr.strip()}")
            time.sleep(0.5)

    def _volumes(self, pod: dict, root: Path) -> dict[str, Path]:
        ns = pod["metadata"]["namespace"]
        world_key = None
        for ic in pod["spec"].get("initContainers") or []:
            if ic["name"] == "world":  # the world generator is deterministic: pods share one copy
                world_key = "-".join(ic["command"][3:-2]).replace("--", "")
        out = {}
        for v in pod["spec"].get("volumes") or []:
            d = root / "vol" / v["name"]
            if "configMap" in v or "secret" in v:
                if "configMap" in v:
                    obj = self._configmap(v["configMap"]["name"], ns)
                    files = {k: t.encode() for k, t in (obj.get("data") or {}).items()}
                    files.update({k: base64.b64decode(b) for k, b in (obj.get("binaryData") or {}).items()})
                    items = v["configMap"].get("items")
                else:
                    obj = self._get("secret", v["secret"]["secretName"], ns)
                    files = {k: base64.b64decode(b) for k, b in (obj.get("data") or {}).items()}
                    items = v["secret"].get("items")
                d.mkdir(parents=True, exist_ok=True)
                for key, rel in ([(i["key"], i["path"]) for i in items] if items else [(k, k) for k in files]):
                    (d / rel).parent.mkdir(parents=True, exist_ok=True)
                    (d / rel).write_bytes(files[key])
            elif "persistentVolumeClaim" in v:
                claim = self._get("pvc", v["persistentVolumeClaim"]["claimName"], ns)
                if (claim.get("status") or {}).get("phase") != "Bound":
                    raise RuntimeError(f"volume {v['name']}: claim {claim['metadata']['name']} is not bound")
                pv = self._get("pv", claim["spec"]["volumeName"], None)["spec"]
                d = Path((pv.get("hostPath") or pv.get("local") or {})["path"])
            elif v["name"] == "data" and world_key:
                d = self.work / "worlds" / world_key
            else:
                d.mkdir(parents=True, exist_ok=True)
            out[v["name"]] = d
        return out

    def _credentials(self, pod: dict, root: Path) -> dict[str, str]:
        """The service-account token a kubelet would mount, as a kubeconfig; {} when the pod has none."""
        spec = pod["spec"]
        if spec.get("automountServiceAccountToken") is False:
            return {}
        ns, sa = pod["metadata"]["namespace"], spec.get("serviceAccountName") or "default"
        if self._get("serviceaccount", sa, ns).get("automountServiceAccountToken") is False \
                and spec.get("automountServiceAccountToken") is not True:
            return {}
        kubeconfig = service_account_kubeconfig(self.c, ns, sa, root / "serviceaccount" / "kubeconfig", bound_pod=pod)
        cfg = yaml.safe_load(kubeconfig.read_text())
        sa_dir = root / "serviceaccount"
        (sa_dir / "token").write_text(cfg["users"][0]["user"]["token"])
        (sa_dir / "namespace").write_text(ns)
        shutil.copy(self.c.pki.ca_cert, sa_dir / "ca.crt")
        return {"KUBECONFIG": str(kubeconfig)}

    def _process(self, pod: dict, container: dict, volumes: dict[str, Path], root: Path,
                 ports: dict[int, int], credentials: dict[str, str]) -> tuple[list[str], dict[str, str]]:
        mounts = [(m["mountPath"], volumes[m["name"]] / m.get("subPath", "")) for m in container.get("volumeMounts") or []]
        term = root / f"{container['name']}.termination-log"
        mounts.append((container.get("terminationMessagePath") or "/dev/termination-log", term))
        if credentials:
            mounts.append((SA_DIR, root / "serviceaccount"))
        mounts.sort(key=lambda x: -len(x[0]))

        def parent_view(path: str) -> str | None:
            """A folder standing in for a container folder that only holds mounts (/work with volumes at
            /work/a and /work/b): links to those volumes' host folders. None when nothing is mounted below."""
            below = [(m, d) for m, d in mounts if m.startswith(path.rstrip("/") + "/")]
            if not path.startswith("/") or path == "/" or not below:
                return None
            view = root / "fs" / container["name"] / path.strip("/")
            for m, d in below:
                link = view / m[len(path.rstrip("/")) + 1:]
                link.parent.mkdir(parents=True, exist_ok=True)
                if not link.is_symlink():
                    link.symlink_to(d, target_is_directory=True)
            return str(view)

        def host(text: str) -> str:
            for path, d in mounts:
                if text == path or text.startswith(path + "/"):
                    text = str(d) + text[len(path):]
                    break
            else:
                text = parent_view(text) or text
            if ports:
                if text.isdigit() and int(text) in ports:
                    return str(ports[int(text)])
                text = re.sub(r":(\d+)(?=/|$)", lambda m: f":{ports.get(int(m.group(1)), m.group(1))}", text)
            return text.replace("0.0.0.0", "127.0.0.1")

        cmd = [host(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        if not cmd:
            raise RuntimeError(f"container {container['name']}: no command (the image's default is not known here)")
        cmd = [sys.executable if a == "python" else str(VENV_BIN / "cambrian") if a == "cambrian" else a for a in cmd]
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
        ns = pod["metadata"]["namespace"]
        for source in container.get("envFrom") or []:  # as a kubelet: envFrom first, env entries override it
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                data = {k: base64.b64decode(v).decode() for k, v in
                        (self._get("secret", source["secretRef"]["name"], ns).get("data") or {}).items()}
            elif "configMapRef" in source:
                data = dict(self._get("configmap", source["configMapRef"]["name"], ns).get("data") or {})
            else:
                raise ValueError(f"envFrom {sorted(source)} is not supported by the test pod runtime")
            env.update({prefix + k: v for k, v in data.items()})
        for e in container.get("env") or []:
            if "value" in e:
                env[e["name"]] = host(e["value"])
            elif "valueFrom" in e:
                src = e["valueFrom"]
                if "fieldRef" in src:
                    env[e["name"]] = field_ref(pod, src["fieldRef"]["fieldPath"])
                elif "configMapKeyRef" in src:
                    ref = src["configMapKeyRef"]
                    env[e["name"]] = (self._get("configmap", ref["name"], ns).get("data") or {})[ref["key"]]
                elif "secretKeyRef" in src:
                    ref = src["secretKeyRef"]
                    env[e["name"]] = base64.b64decode(self._get("secret", ref["name"], ns)["data"][ref["key"]]).decode()
                else:
                    raise ValueError(f"env {e['name']}: valueFrom {sorted(src)} is not supported by the test pod runtime")
        env.setdefault("HOME", str(root))  # the image's HOME is not known here; the pod's folder stands in
        env.update(credentials)
        return cmd, env

    # -- Job pods ------------------------------------------------------------------------------------
    def run_job_pod(self, pod: dict) -> None:
        name = pod["metadata"]["name"]
        root = self.work / "pods" / name
        root.mkdir(parents=True, exist_ok=True)
        volumes = self._volumes(pod, root)
        credentials = self._credentials(pod, root)
        t0 = time.monotonic()
        for ic in pod["spec"].get("initContainers") or []:
            cmd, env = self._process(pod, ic, volumes, root, {}, credentials)
            # pods share one copy of a generated world: its generator runs once, under the lock; the other
            # steps (a training pod's prepare, trainer, predictor) run in parallel across pods
            world = ic["name"] == "world"
            with self._world_lock if world else contextlib.nullcontext():
                if world and (volumes["data"] / "world.json").is_file():
                    continue
                with open(root / f"{ic['name']}.log", "wb") as log:
                    rc = subprocess.call(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, timeout=600)
            if rc != 0:
                self._finish(pod, rc, json.dumps({"v": 1, "exit_code": rc, "error": {"stage": "init", "reason": ic["name"]}}))
                return
        container = pod["spec"]["containers"][0]
        cmd, env = self._process(pod, container, volumes, root, {}, credentials)
        with open(root / f"{container['name']}.log", "wb") as log:
            rc = subprocess.call(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT, timeout=600)
        term = root / f"{container['name']}.termination-log"
        message = term.read_text() if term.is_file() else ""
        self.runs.append({"pod": name, "job": pod["metadata"].get("labels", {}).get("job-name"), "rc": rc,
                          "seconds": round(time.monotonic() - t0, 1), "command": cmd, "message": message})
        self._finish(pod, rc, message)

    def _finish(self, pod: dict, rc: int, message: str) -> None:
        patch = {"metadata": {"annotations": {ANNOTATION_EXIT_CODE: str(rc), ANNOTATION_TERMINATION_MESSAGE: message,
                                              ANNOTATION_DURATION: "0s"}}}
        self.c.kubectl("patch", "pod", pod["metadata"]["name"], "-n", pod["metadata"]["namespace"], "--type=merge",
                       "-p", json.dumps(patch), check=False)

    # -- long-lived pods ---------------------------------------------------------------------------
    def start_service_pod(self, pod: dict) -> None:
        name = pod["metadata"]["name"]
        root = self.work / "pods" / name
        root.mkdir(parents=True, exist_ok=True)
        volumes = self._volumes(pod, root)
        credentials = self._credentials(pod, root)
        ports = {p["containerPort"]: _free_port() for c in pod["spec"]["containers"] for p in c.get("ports") or []}
        entry = {"namespace": pod["metadata"]["namespace"], "pod": pod, "ports": ports, "procs": {}, "logs": [],
                 "commands": {}, "env": {}}
        for ic in pod["spec"].get("initContainers") or []:
            cmd, env = self._process(pod, ic, volumes, root, ports, credentials)
            rc = subprocess.call(cmd, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
            if rc != 0:
                raise RuntimeError(f"init container {ic['name']} exited {rc}")
        for container in pod["spec"]["containers"]:
            cmd, env = self._process(pod, container, volumes, root, ports, credentials)
            log_path = root / f"{container['name']}.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            entry["procs"][container["name"]] = proc
            entry["logs"].append(str(log_path))
            entry["commands"][container["name"]] = cmd
            entry["env"][container["name"]] = env
        self.services[name] = entry

    def _stop_service(self, name: str) -> None:
        entry = self.services.get(name)
        if not entry:
            return
        # marked first: a container that exits on the SIGTERM below exited because it was stopped, and a
        # test polling exit codes meanwhile must not count it as a crash
        entry["stopped"] = True
        for proc in entry["procs"].values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: the container's process tree only
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
