"""images/Dockerfile.*: static checks (no Docker engine here to build them).

Each final stage runs as a numeric non-root USER; base images carry pinned version tags; nothing is
ADDed from a URL; no secret is baked in; every package folder of pyproject.toml is copied.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = sorted((ROOT / "images").glob("Dockerfile.*"))
SECRETISH = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path.name}: dangling line continuation"
    return out


def stages(ins: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for word, rest in ins:
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, rest))
    return result


def test_there_are_the_three_images():
    assert {p.name for p in IMAGES} == {"Dockerfile.operator", "Dockerfile.trainer", "Dockerfile.serving"}


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_base_images_are_pinned(path):
    ins = instructions(path)
    args = {m.group(1): m.group(2) for w, r in ins if w == "ARG" for m in [re.match(r"(\w+)=(\S+)", r)] if m}
    names: set[str] = set()
    for word, rest in ins:
        if word != "FROM":
            continue
        parts = [p for p in rest.split() if not p.startswith("--")]
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
        if len(parts) >= 3 and parts[1].upper() == "AS":
            names.add(parts[2])
        if image in names:
            continue  # an earlier stage
        assert "$" not in image, f"{path.name}: unresolved base image {image}"
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{path.name}: base image {image} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{path.name}: base tag {tag!r} is not a pinned version"


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_final_stage_runs_as_numeric_non_root_user(path):
    final = stages(instructions(path))[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users, f"{path.name}: the final stage sets no USER (would run as root)"
    user = users[-1]
    m = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    assert m, f"{path.name}: USER {user!r} is not numeric (Kubernetes runAsNonRoot needs a numeric uid)"
    assert int(m.group(1)) != 0 and (m.group(2) is None or int(m.group(2)) != 0), f"{path.name}: USER {user}"
    after = [w for w, _ in final[final.index(("USER", user)) + 1:]]
    assert "RUN" not in after, f"{path.name}: RUN after the last USER"
    cmd = [r for w, r in final if w == "CMD"]
    assert cmd and json.loads(cmd[-1])[0] == "cambrian", f"{path.name}: CMD must be exec form starting with cambrian"


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_no_entrypoint_so_pod_args_are_the_whole_command(path):
    """The operator's serving and router pods set `args: [cambrian, serve, ...]` and no command, and
    the chart sets `command: [cambrian]`: an image ENTRYPOINT would run `cambrian cambrian ...`."""
    assert not [r for w, r in stages(instructions(path))[-1] if w == "ENTRYPOINT"], path.name


def test_operator_pods_match_the_image_convention():
    from cambrian.operator.platform import kubernetes as k8s
    from cambrian.operator.reconcile.actions import Owner

    owner = Owner(kind="Rollout", name="ro", uid="u1", namespace="team-a")
    dep = k8s._server_deployment("arm", owner, k8s.arm_labels("ro", "a"), {"image": "s:1"},
                                 ["cambrian", "serve", "--bundle", "/b"], [], [], 1)
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    argv = container.get("command", []) + container.get("args", [])
    assert argv[0] == "cambrian" and argv.count("cambrian") == 1, argv


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_no_remote_add_and_no_secrets(path):
    for word, rest in instructions(path):
        if word == "ADD":
            assert not re.search(r"(https?|git|ftp)://|git@", rest), f"{path.name}: ADD from a URL: {rest}"
        if word in ("ENV", "ARG"):
            for name in re.findall(r"(\w+)=", rest) or [rest.split()[0]]:
                assert not SECRETISH.search(name), f"{path.name}: {word} {name} looks like a secret"
        if word in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|\.pem\b|id_rsa|\.key\b|kubeconfig", rest), f"{path.name}: {rest}"


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_every_package_folder_is_copied(path):
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    copied = set()
    for word, rest in instructions(path):
        if word == "COPY" and "--from" not in rest:
            copied.update(p.rstrip("/") for p in rest.split()[:-1])
    for folder in set(package_dir.values()):
        assert folder in copied, f"{path.name}: package folder {folder}/ is not copied"
        assert (ROOT / folder).is_dir()
    assert "pyproject.toml" in copied


def test_dockerignore_keeps_the_context_small_and_secret_free():
    lines = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0] == "**", "start from an empty context and re-include only what the images copy"
    included = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert set(package_dir.values()) | {"pyproject.toml"} <= included
    assert not any(x in included for x in (".env", ".venv", ".git", "tests"))
    assert "**/.env" in lines
