"""End-to-end fixtures: the real control plane, and a harness that plays the container runtime for
training pods (there is none here): it runs the pod's real command on the host and hands the result
back to kwok through the pod annotations, so the pod finishes with the real termination message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

# Fast level-based timers and a free metrics port (read when cambrian.operator.handlers is imported).
os.environ.setdefault("CAMBRIAN_OPERATOR_INTERVAL", "1")
os.environ.setdefault("CAMBRIAN_METRICS_PORT", "0")
os.environ.setdefault("CAMBRIAN_METRICS_ADDR", "127.0.0.1")

from cambrian.testing.cluster import ANNOTATION_EXIT_CODE, ANNOTATION_TERMINATION_MESSAGE  # noqa: E402
from cambrian.testing.fixtures import cluster, cluster_namespace, pytest_runtest_makereport  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ANNOTATION_DURATION = "kwok.cambrian.dev/duration"


class PodRuntime:
    """Watches a namespace for Running Job pods and runs each one's containers on the host.

    Volumes become host folders (configMap volumes are filled from the ConfigMap), container paths
    in the command are mapped to them, init containers run first, and the trainer container's
    termination-log file is read back and set as the pod's kwok annotations (exit code, message).
    Identical world-generation init containers share one generated folder (they are deterministic)."""

    def __init__(self, cluster, namespace: str, workdir: Path, workers: int = 2):
        self.c, self.ns, self.work = cluster, namespace, Path(workdir)
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.seen: set[str] = set()
        self.runs: list[dict] = []
        self.errors: list[str] = []
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

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                pods = json.loads(self.c.kubectl("get", "pods", "-n", self.ns, "-o", "json", check=False).stdout
                                  or '{"items": []}')["items"]
            except (ValueError, subprocess.SubprocessError):  # a slow API server: try again next round
                pods = []
            for pod in pods:
                meta = pod["metadata"]
                if meta["uid"] in self.seen or meta.get("deletionTimestamp"):
                    continue
                if not any(r.get("kind") == "Job" for r in meta.get("ownerReferences") or []):
                    continue
                if (pod.get("status") or {}).get("phase") != "Running":
                    continue
                if ANNOTATION_EXIT_CODE in (meta.get("annotations") or {}):
                    continue
                self.seen.add(meta["uid"])
                self.pool.submit(self._run_safely, pod)
            self._stop.wait(0.5)

    def _run_safely(self, pod: dict) -> None:
        try:
            self.run(pod)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(f"{pod['metadata']['name']}: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------------------------------
    def _volumes(self, pod: dict, root: Path) -> dict[str, Path]:
        out = {}
        world_key = None
        for ic in pod["spec"].get("initContainers") or []:
            if ic["name"] == "world":
                world_key = "-".join(ic["command"][3:-2]).replace("--", "")
        for v in pod["spec"].get("volumes") or []:
            d = root / "vol" / v["name"]
            if "configMap" in v:
                d.mkdir(parents=True, exist_ok=True)
                cm = json.loads(self.c.kubectl("get", "configmap", v["configMap"]["name"], "-n", self.ns,
                                               "-o", "json").stdout)
                for k, text in (cm.get("data") or {}).items():
                    (d / k).write_text(text)
            elif v["name"] == "data" and world_key:
                d = self.work / "worlds" / world_key  # shared between pods: generated once
            else:
                d.mkdir(parents=True, exist_ok=True)
            out[v["name"]] = d
        return out

    def _command(self, container: dict, volumes: dict[str, Path], root: Path) -> tuple[list[str], dict[str, str]]:
        mounts = sorted(((m["mountPath"], volumes[m["name"]]) for m in container.get("volumeMounts") or []),
                        key=lambda x: -len(x[0]))

        def host(arg: str) -> str:
            for path, d in mounts:
                if arg == path or arg.startswith(path + "/"):
                    return str(d) + arg[len(path):]
            return arg

        cmd = [host(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
        cmd = [sys.executable if a == "python" else str(VENV_BIN / "cambrian") if a == "cambrian" else a for a in cmd]
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")}
        env.update({e["name"]: host(e.get("value", "")) for e in container.get("env") or [] if "value" in e})
        env["HOME"] = str(root)
        env["CAMBRIAN_TERMINATION_LOG"] = str(root / f"{container['name']}.termination-log")
        return cmd, env

    def run(self, pod: dict) -> None:
        name = pod["metadata"]["name"]
        root = self.work / "pods" / name
        root.mkdir(parents=True, exist_ok=True)
        volumes = self._volumes(pod, root)
        t0 = time.monotonic()
        for ic in pod["spec"].get("initContainers") or []:
            cmd, env = self._command(ic, volumes, root)
            with self._world_lock:
                if ic["name"] == "world" and (volumes["data"] / "world.json").is_file():
                    continue
                rc = subprocess.call(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
            if rc != 0:
                self._finish(name, rc, json.dumps({"v": 1, "exit_code": rc, "error": {"stage": "init", "reason": ic["name"]}}))
                return
        (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "trainer"]
        cmd, env = self._command(container, volumes, root)
        with open(root / "trainer.log", "wb") as log:
            rc = subprocess.call(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600)
        term = Path(env["CAMBRIAN_TERMINATION_LOG"])
        message = term.read_text() if term.is_file() else ""
        self.runs.append({"pod": name, "job": pod["metadata"].get("labels", {}).get("job-name"), "rc": rc,
                          "seconds": round(time.monotonic() - t0, 1), "command": cmd, "message": message})
        self._finish(name, rc, message)

    def _finish(self, pod: str, rc: int, message: str) -> None:
        patch = {"metadata": {"annotations": {ANNOTATION_EXIT_CODE: str(rc), ANNOTATION_TERMINATION_MESSAGE: message,
                                              ANNOTATION_DURATION: "0s"}}}
        self.c.kubectl("patch", "pod", pod, "-n", self.ns, "--type=merge", "-p", json.dumps(patch), check=False)


@pytest.fixture
def pod_runtime(cluster, cluster_namespace, tmp_path):  # noqa: F811
    with PodRuntime(cluster, cluster_namespace, tmp_path / "runtime") as rt:
        yield rt
    shutil.rmtree(tmp_path / "runtime" / "pods", ignore_errors=True)
