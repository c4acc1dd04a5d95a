"""A hostile bundle: the candidate's process writes every byte of model.pt2, and torch.export.load unpickles the
payloads its archive marks as pickled. Serving such a bundle (`cambrian serve`, `load_bundle`) loads the program
in a contained host process, so the payload cannot touch the server's machine; one that breaks the host fails
with stage export and one line."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from attacks import run_attack


class _Payload:
    """Unpickles to eval(expr)."""

    def __init__(self, expr: str):
        self.expr = expr

    def __reduce__(self):
        return (eval, (self.expr,))


def tamper(bundle: Path, out: Path, action: str) -> Path:
    """A copy of the bundle whose archive marks its first weight as pickled, with a payload that runs `action`
    (a Python expression) and then yields a well-formed weight, so that the program still loads."""
    import torch

    shutil.copytree(bundle, out)
    src = (bundle / "model.pt2").read_bytes()
    with zipfile.ZipFile(io.BytesIO(src)) as zin:
        names = zin.namelist()
        cfg_name = next(n for n in names if n.endswith("_weights_config.json"))
        cfg = json.loads(zin.read(cfg_name))
        _, meta = next(iter(cfg["config"].items()))
        shape = [s["as_int"] for s in meta["tensor_meta"]["sizes"]]
        meta["use_pickle"] = True
        weight = cfg_name.rsplit("/", 1)[0] + "/" + meta["path_name"]
        buf = io.BytesIO()
        torch.save(_Payload(f"({action}, __import__('torch').nn.Parameter(__import__('torch').zeros({shape})))[1]"), buf)
        with zipfile.ZipFile(out / "model.pt2", "w", zipfile.ZIP_STORED) as zout:
            for n in names:
                data = json.dumps(cfg).encode() if n == cfg_name else buf.getvalue() if n == weight else zin.read(n)
                zout.writestr(n, data)
    return out


def write_marker(folder: Path) -> str:
    """An expression that leaves a file in a host folder if it can see that folder."""
    return (f"__import__('pathlib').Path({str(folder)!r}).is_dir() and "
            f"__import__('pathlib').Path({str(folder)!r}, 'pwned').write_text('bundle code ran here')")


@pytest.fixture(scope="module")
def trained_bundle(tiny_world, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bundle")
    v = run_attack("train", tiny_world, tmp, {"component": "optimizer", "patch": {"lr": 0.002}})
    assert v.ok, (v.stage, v.reason)
    return tmp / "out" / "bundle"


def test_the_payload_runs_when_the_archive_is_loaded_in_process(trained_bundle, tmp_path):
    """The control: what `cambrian serve` did before (torch.export.load in its own process) runs the payload."""
    marker = tmp_path / "markers"
    marker.mkdir()
    bad = tamper(trained_bundle, tmp_path / "bad", write_marker(marker))
    subprocess.run([sys.executable, "-c", f"import torch; torch.export.load({str(bad / 'model.pt2')!r})"],
                   check=True, capture_output=True, timeout=300)
    assert (marker / "pwned").exists()


def _serve(bundle: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    port_file = tmp / "port"
    proc = subprocess.Popen([sys.executable, "-m", "cambrian.cli", "serve", "--bundle", str(bundle), "--arm", "a",
                             "--port", "0", "--port-file", str(port_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not port_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port_file.read_text().strip()}" if port_file.exists() else ""


def test_serving_a_hostile_bundle_runs_its_payload_contained(trained_bundle, tmp_path):
    marker = tmp_path / "markers"
    marker.mkdir()
    bad = tamper(trained_bundle, tmp_path / "bad", write_marker(marker))
    proc, url = _serve(bad, tmp_path)
    try:
        assert url, proc.communicate(timeout=30)
        r = httpx.post(url + "/rank", json={"user_ids": [0, 1], "candidates": [[0, 1, 2], [3, 4, 5]]}, timeout=30)
        assert r.status_code == 200, r.text
        assert len(r.json()["slates"]) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not (marker / "pwned").exists()


def test_a_bundle_that_breaks_its_host_fails_with_stage_export(trained_bundle, tmp_path):
    bad = tamper(trained_bundle, tmp_path / "bad", "__import__('os')._exit(0)")
    proc = subprocess.run([sys.executable, "-m", "cambrian.cli", "serve", "--bundle", str(bad), "--arm", "a",
                           "--port", "0"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "export" in proc.stderr and "did not load" in proc.stderr, proc.stderr


def test_bundle_scores_come_from_the_contained_host(trained_bundle):
    """`load_bundle` (what the server and the benchmarks use) never loads the program in the caller's process."""
    import numpy as np

    from cambrian.trainer.bundle import load_bundle

    with load_bundle(trained_bundle) as bundle:
        scores = bundle.score(np.array([0, 1]), np.array([[0, 1, 2], [2, 1, 0]]))
        assert scores.shape == (2, 3) and np.isfinite(scores).all()
        assert bundle.host.contain and bundle.host._proc is not None and bundle.host._proc.poll() is None
        host = bundle.host._proc
    assert host.poll() is not None  # closed with the bundle


def test_the_serving_process_never_imports_torch(trained_bundle):
    """The server's own process cannot unpickle a program: it does not even import torch."""
    code = ("import sys, numpy as np\n"
            "from cambrian.online.server import bundle_server\n"
            f"server = bundle_server({str(trained_bundle)!r}, 'a')\n"
            "print(server.scorer.score(np.array([0]), np.array([[0, 1, 2]])).shape, 'torch' in sys.modules)\n"
            "server.scorer.close()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(1,", "3)", "False"], out.stdout


def test_inside_an_outer_boundary_the_host_is_a_plain_child_with_the_same_scores(trained_bundle):
    """`--sandbox none` (a model server's pod): the program still runs outside the server's process."""
    import numpy as np

    from cambrian.trainer.bundle import load_bundle

    users, cands = np.array([0, 1]), np.array([[0, 1, 2], [2, 1, 0]])
    with load_bundle(trained_bundle, "none") as plain, load_bundle(trained_bundle) as contained:
        assert not plain.host.contain and plain.host._proc.pid != contained.host._proc.pid
        np.testing.assert_array_equal(plain.score(users, cands), contained.score(users, cands))
