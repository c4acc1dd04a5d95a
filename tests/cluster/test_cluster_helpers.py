"""Fast tests of cambrian.testing.cluster that need no built binaries."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from cambrian.testing import cluster as cl
from cambrian.testing.pki import generate_pki


def test_free_ports_are_distinct() -> None:
    ports = cl.free_ports(6)
    assert len(set(ports)) == 6 and all(1024 < p < 65536 for p in ports)


def test_node_manifest_gpu_capacity() -> None:
    gpu = cl.node_manifest("g", gpus=4)
    assert gpu["status"]["capacity"]["nvidia.com/gpu"] == "4"
    assert gpu["status"]["allocatable"] == gpu["status"]["capacity"]
    assert gpu["metadata"]["labels"][cl.GPU_NODE_LABEL] == "true"
    assert gpu["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    cpu = cl.node_manifest("c")
    assert "nvidia.com/gpu" not in cpu["status"]["capacity"]
    assert cl.GPU_NODE_LABEL not in cpu["metadata"]["labels"]


def test_pki_chain_and_kubeconfig(tmp_path: Path) -> None:
    pki = generate_pki(tmp_path / "pki")
    out = subprocess.run(["openssl", "verify", "-CAfile", pki.ca_cert, pki.server_cert,
                          pki.admin_cert], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    subject = subprocess.run(["openssl", "x509", "-in", pki.admin_cert, "-noout", "-subject"],
                             capture_output=True, text=True).stdout
    assert "system:masters" in subject
    assert stat.S_IMODE(os.stat(pki.admin_key).st_mode) == 0o600
    kc = cl.kubeconfig_dict("https://127.0.0.1:1234", pki)
    assert kc["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:1234"
    assert base64.b64decode(kc["users"][0]["user"]["client-certificate-data"]) == \
        pki.admin_cert.read_bytes()


def test_stages_file_has_every_stage() -> None:
    docs = list(yaml.safe_load_all(cl.STAGES_FILE.read_text()))
    names = {d["metadata"]["name"] for d in docs}
    assert {"node-initialize", "node-heartbeat", "pod-ready", "pod-complete",
            "pod-finish-with-exit-code", "pod-delete"} <= names
    assert all(d["kind"] == "Stage" for d in docs)
    assert cl.ANNOTATION_EXIT_CODE in cl.STAGES_FILE.read_text()


def test_missing_binaries_reported(tmp_path: Path) -> None:
    assert cl.missing_binaries(tmp_path) == list(cl.BINARIES)
    with pytest.raises(cl.ClusterError, match="missing binaries"):
        cl.start_cluster(tmp_path)


def test_component_crash_raises_with_its_log(tmp_path: Path) -> None:
    """A component that dies during start-up is reported with its log, and nothing is left."""
    for name in cl.BINARIES:
        script = tmp_path / name
        script.write_text("#!/bin/sh\necho 'etcd: simulated failure to start' >&2\nexit 3\n")
        script.chmod(0o755)
    work = tmp_path / "work"
    with pytest.raises(cl.ClusterError) as err:
        cl.start_cluster(tmp_path, work_dir=work, timeout=20)
    msg = str(err.value)
    assert "etcd" in msg and "exited" in msg and "simulated failure to start" in msg
    assert not work.exists()
