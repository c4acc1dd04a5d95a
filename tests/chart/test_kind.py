"""The kind quick start (scripts/kind-up.sh, scripts/kind-down.sh, manifests/kind/), tested where no
container engine runs: the dry-run listing, the real run against recording stand-ins for docker,
kind, kubectl and helm (same commands as the listing), the prerequisite checks and their exit code,
the images against what the chart renders with the kind values, the kind config through kind's own
loader and validator (built from the Go module proxy), and the Prometheus and Grafana manifests
against the chart's Service, URL and dashboard ConfigMaps.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
UP = ROOT / "scripts" / "kind-up.sh"
DOWN = ROOT / "scripts" / "kind-down.sh"
KIND = ROOT / "manifests" / "kind"
VALUES = KIND / "values.yaml"
EXAMPLE = "manifests/examples/quickstart/"
EXIT_MISSING = 6
IMAGES = {"localhost/cambrian-operator:kind", "localhost/cambrian-serving:kind", "localhost/cambrian-trainer:kind"}
# What the dry run needs from the system: a shell and text tools, no container engine, no kind.
BASE_TOOLS = ("bash", "dirname", "sed", "awk", "cat", "grep")


def tool_dir(tmp_path: Path, stubs: dict[str, str] | None = None) -> Path:
    """A PATH directory with the base tools linked in and `stubs` (name -> shell body) as scripts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in BASE_TOOLS:
        if (bin_dir / name).exists():
            continue
        target = shutil.which(name)
        assert target, f"{name} is needed to run the scripts"
        (bin_dir / name).symlink_to(target)
    for name, body in (stubs or {}).items():
        path = bin_dir / name
        path.write_text(f"#!{shutil.which('bash')}\n{body}\n")
        path.chmod(0o755)
    return bin_dir


def run(script: Path, *args: str, path: Path, cwd: Path = ROOT, env: dict | None = None):
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={"PATH": str(path), "HOME": os.environ.get("HOME", "/tmp"), **(env or {})})


def commands(listing: str) -> list[list[str]]:
    """The commands of a dry-run listing, a pipeline split into its commands; comments dropped."""
    out = []
    for line in listing.splitlines():
        if line and not line.startswith("#"):
            for part in line.split(" | "):
                out.append(shlex.split(part))
    return out


def dry_run(tmp_path: Path, *args: str) -> list[list[str]]:
    proc = run(UP, "--dry-run", *args, path=tool_dir(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return commands(proc.stdout)


def option_values(cmd: list[str], option: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == option]


CTX = ["--context", "kind-cambrian"]
EXPECTED_DOCKER_CPU = [
    ["kind", "create", "cluster", "--name", "cambrian", "--config", "manifests/kind/cluster.yaml", "--wait", "180s"],
    ["export", "DOCKER_BUILDKIT=1"],
    ["docker", "build", "-f", "images/Dockerfile.operator", "-t", "localhost/cambrian-operator:kind", "."],
    ["docker", "build", "-f", "images/Dockerfile.serving", "--build-arg",
     "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu", "-t", "localhost/cambrian-serving:kind", "."],
    ["docker", "build", "-f", "images/Dockerfile.trainer", "--build-arg",
     "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu", "-t", "localhost/cambrian-trainer:kind", "."],
    ["kind", "load", "docker-image", "--name", "cambrian", "localhost/cambrian-operator:kind",
     "localhost/cambrian-serving:kind", "localhost/cambrian-trainer:kind"],
    ["kubectl", *CTX, "apply", "-f", "manifests/kind/prometheus.yaml"],
    ["kubectl", *CTX, "-n", "monitoring", "create", "configmap", "prometheus-config",
     "--from-file=manifests/prometheus/prometheus.yml", "--from-file=manifests/prometheus/cambrian-rules.yaml",
     "--dry-run=client", "-o", "yaml"],
    ["kubectl", *CTX, "apply", "-f", "-"],
    ["kubectl", *CTX, "-n", "monitoring", "rollout", "status", "deployment/prometheus", "--timeout=300s"],
    ["helm", "--kube-context", "kind-cambrian", "upgrade", "--install", "cambrian", "charts/cambrian",
     "--namespace", "cambrian", "--create-namespace", "--values", "manifests/kind/values.yaml", "--wait",
     "--timeout", "10m"],
    ["kubectl", *CTX, "wait", "--for=condition=Established", "crd/evolutions.cambrian.dev",
     "crd/hypotheses.cambrian.dev", "crd/rollouts.cambrian.dev", "--timeout=60s"],
    ["kubectl", *CTX, "apply", "-f", "manifests/kind/grafana.yaml"],
    ["kubectl", *CTX, "-n", "monitoring", "rollout", "status", "deployment/grafana", "--timeout=300s"],
    ["kubectl", *CTX, "apply", "-n", "cambrian", "-f", EXAMPLE],
]


# --- the dry run ------------------------------------------------------------------------------------

def test_dry_run_prints_every_command_in_order_without_any_tool(tmp_path):
    """PATH holds no docker, podman, kind, kubectl or helm: the listing needs none of them."""
    assert dry_run(tmp_path, "--engine", "docker") == EXPECTED_DOCKER_CPU


def test_dry_run_listing_tells_how_to_watch_and_open_the_dashboards(tmp_path):
    proc = run(UP, "--dry-run", path=tool_dir(tmp_path))
    guide = proc.stdout
    assert "# 1/6 " in guide and "# 6/6 " in guide
    assert "kubectl --context kind-cambrian -n cambrian get evo,hyp,ro -w" in guide
    assert "port-forward service/grafana 3000:3000" in guide
    assert "port-forward service/prometheus 9090:9090" in guide
    assert "scripts/kind-down.sh" in guide
    proc = subprocess.run(["bash", "-n"], input=guide, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, "the listing is not a valid shell script: " + proc.stderr


def test_dry_run_with_podman_and_gpu(tmp_path):
    cmds = dry_run(tmp_path, "--engine", "podman", "--gpu", "--name", "dev")
    assert cmds[0] == ["export", "KIND_EXPERIMENTAL_PROVIDER=podman"]
    builds = {tuple(option_values(c, "-f")): option_values(c, "-t") for c in cmds if c[:2] == ["podman", "build"]}
    assert builds == {("images/Dockerfile.operator",): ["localhost/cambrian-operator:kind"],
                      ("images/Dockerfile.serving",): ["localhost/cambrian-serving:kind"],
                      ("images/Dockerfile.trainer",): ["localhost/cambrian-trainer:kind"]}
    # kind load docker-image calls the docker CLI: with Podman the images go through an archive.
    (save,) = [c for c in cmds if c[:2] == ["podman", "save"]]
    (load,) = [c for c in cmds if c[:2] == ["kind", "load"]]
    archive = option_values(save, "-o")[0]
    assert load == ["kind", "load", "image-archive", "--name", "dev", archive]
    assert set(save[save.index(archive) + 1:]) == IMAGES
    assert ["rm", "-f", archive] in cmds
    assert not [c for c in cmds if c[0] == "docker"]
    assert all(option_values(c, "--context") == ["kind-dev"] for c in cmds if c[0] == "kubectl")


def test_kind_down_dry_run(tmp_path):
    proc = run(DOWN, "--dry-run", "--name", "dev", path=tool_dir(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert commands(proc.stdout) == [["kind", "delete", "cluster", "--name", "dev"]]


@pytest.mark.parametrize("script", [UP, DOWN], ids=lambda p: p.name)
@pytest.mark.parametrize("args, message", [
    (["--name", "My_Cluster"], "invalid cluster name 'My_Cluster'"),
    (["--engine", "lxc"], "--engine must be docker or podman, not 'lxc'"),
    (["--bogus"], "unknown argument '--bogus'"),
    (["--name"], "--name needs a value"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, script, args, message):
    proc = run(script, "--dry-run", *args, path=tool_dir(tmp_path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


# --- the prerequisite checks ------------------------------------------------------------------------

OK = "exit 0"


@pytest.mark.parametrize("script", [UP, DOWN], ids=lambda p: p.name)
def test_no_container_engine_exits_6_with_the_documented_message(tmp_path, script):
    stubs = {"kind": OK, "kubectl": OK, "helm": OK}  # everything else is there: the engine is what is missing
    proc = run(script, path=tool_dir(tmp_path, stubs))
    assert proc.returncode == EXIT_MISSING
    assert proc.stdout == ""
    name = script.stem
    assert proc.stderr == (f"{name}: no container engine found: install Docker (https://docs.docker.com/get-docker/)"
                           " or Podman (https://podman.io/docs/installation)\n")
    documented = run(script, "--help", path=tool_dir(tmp_path)).stdout
    assert re.search(r"\b6 [^;]*missing", documented), "exit code 6 is not documented in --help"


@pytest.mark.parametrize("missing, message", [
    ("docker-daemon", "kind-up: docker is installed but not running ('docker info' failed)"),
    ("kind", "kind-up: kind not found: install kind v0.33.0 ('go install sigs.k8s.io/kind@v0.33.0'"),
    ("kubectl", "kind-up: kubectl not found: install it (https://kubernetes.io/docs/tasks/tools/)"),
    ("helm", "kind-up: helm not found: install Helm 3 (https://helm.sh/docs/intro/install/)"),
])
def test_each_missing_prerequisite_exits_6_naming_it(tmp_path, missing, message):
    stubs = {"docker": OK, "kind": OK, "kubectl": OK, "helm": OK}
    if missing == "docker-daemon":
        stubs["docker"] = '[ "$1" = info ] && exit 1; exit 0'  # the CLI is there, the daemon is not
    else:
        del stubs[missing]
    proc = run(UP, path=tool_dir(tmp_path, stubs))
    assert proc.returncode == EXIT_MISSING, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(message), proc.stderr


def test_podman_is_used_when_docker_is_absent(tmp_path):
    stubs = {"podman": '[ "$1" = info ] && exit 1; exit 0', "kind": OK, "kubectl": OK, "helm": OK}
    proc = run(UP, path=tool_dir(tmp_path, stubs))
    assert proc.returncode == EXIT_MISSING
    assert proc.stderr.startswith("kind-up: podman is installed but not running"), proc.stderr


# One append per call (a pipeline's two stand-ins write at once: two appends each could interleave).
RECORD = 'line=$(printf "%q " "${0##*/}" "$@"); printf "%s\\n" "$line" >> "$CALLS"'


def checkout_copy(tmp_path: Path) -> Path:
    """The files kind-up reads, copied; the plain example is a placeholder when this branch lacks it."""
    root = tmp_path / "repo"
    for rel in ("scripts", "manifests", "images"):
        shutil.copytree(ROOT / rel, root / rel)
    (root / "charts" / "cambrian").mkdir(parents=True)
    shutil.copy(ROOT / "charts" / "cambrian" / "Chart.yaml", root / "charts" / "cambrian")
    (root / EXAMPLE).mkdir(parents=True, exist_ok=True)
    return root


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_the_real_run_runs_exactly_the_dry_run_listing(tmp_path, engine):
    """docker/podman, kind, kubectl and helm are recording stand-ins that succeed: the script runs the
    commands its dry run prints, in the same order, and ends with the guide."""
    root = checkout_copy(tmp_path)
    calls = tmp_path / "calls.log"
    stubs = {name: RECORD for name in (engine, "kind", "kubectl", "helm")}
    bin_dir = tool_dir(tmp_path, stubs)
    (bin_dir / "rm").symlink_to(shutil.which("rm"))
    proc = run(root / "scripts" / "kind-up.sh", "--engine", engine, path=bin_dir, env={"CALLS": str(calls)})
    assert proc.returncode == 0, proc.stderr
    assert "get evo,hyp,ro -w" in proc.stdout
    recorded = [shlex.split(line) for line in calls.read_text().splitlines()]
    listing = run(UP, "--dry-run", "--engine", engine, path=bin_dir)
    probes = [["kind", "get", "clusters"], [engine, "info"]]
    recorded_steps = [c for c in recorded if c not in probes]
    # A pipeline's commands start together and record in either order: compare each line as a set.
    at = 0
    for line in listing.stdout.splitlines():
        if not line or line.startswith("#"):
            continue
        group = [shlex.split(part) for part in line.split(" | ")]
        if group[0][0] in ("export", "rm"):  # shell builtins and cleanup, not stand-ins
            continue
        assert sorted(recorded_steps[at:at + len(group)]) == sorted(group), f"step {at}: {line}"
        at += len(group)
    assert at == len(recorded_steps), recorded_steps[at:]
    assert recorded.count([engine, "info"]) == 1 and ["kind", "get", "clusters"] in recorded


def test_an_existing_cluster_is_reused(tmp_path):
    root = checkout_copy(tmp_path)
    calls = tmp_path / "calls.log"
    kind = 'if [ "$1 $2" = "get clusters" ]; then echo other; echo cambrian; fi; ' + RECORD
    bin_dir = tool_dir(tmp_path, {"docker": OK, "kind": kind, "kubectl": OK, "helm": OK})
    proc = run(root / "scripts" / "kind-up.sh", path=bin_dir, env={"CALLS": str(calls)})
    assert proc.returncode == 0, proc.stderr
    assert "kind cluster 'cambrian' exists; reusing it" in proc.stderr
    assert not [line for line in calls.read_text().splitlines() if line.startswith("kind create")]


# --- the images -------------------------------------------------------------------------------------

def rendered_images(render) -> dict[str, tuple[str, str]]:
    """component -> (image, pull policy) as the chart renders them with the kind values."""
    docs = render.docs("--values", str(VALUES))
    dep = render.one(docs, "Deployment", "cambrian-operator")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    config = yaml.safe_load(render.one(docs, "ConfigMap", "cambrian-operator")["data"]["operator.yaml"])
    return {"operator": (container["image"], container["imagePullPolicy"]),
            "training": (config["training"]["image"], config["training"]["imagePullPolicy"]),
            "serving": (config["serving"]["image"], config["serving"]["imagePullPolicy"])}


@pytest.mark.parametrize("args", [["--engine", "docker"], ["--engine", "podman", "--gpu"]], ids=["docker-cpu", "podman-gpu"])
def test_built_and_loaded_images_are_the_ones_the_chart_renders(tmp_path, render, args):
    cmds = dry_run(tmp_path, *args)
    built = {tag for c in cmds if c[1:2] == ["build"] for tag in option_values(c, "-t")}
    (load,) = [c for c in cmds if c[:3] == ["kind", "load", "docker-image"] or c[:2] == ["podman", "save"]]
    loaded = set(load[-3:])
    images = rendered_images(render)
    assert built == loaded == {image for image, _ in images.values()} == IMAGES
    # The images exist only on the kind node: nothing may try to pull them.
    assert {policy for _, policy in images.values()} == {"Never"}


def test_router_values_use_the_loaded_serving_image():
    values = yaml.safe_load(VALUES.read_text())
    assert values["router"]["image"] == values["serving"]["image"]


def dockerfile_args(dockerfile: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile.read_text(), re.M))


@pytest.mark.parametrize("args", [["--engine", "docker"], ["--engine", "podman", "--gpu"]], ids=["docker-cpu", "podman-gpu"])
def test_every_build_arg_is_declared_by_its_dockerfile(tmp_path, args):
    """A --build-arg a Dockerfile does not declare is silently ignored: the CPU choice would be lost."""
    for cmd in dry_run(tmp_path, *args):
        if cmd[1:2] != ["build"]:
            continue
        declared = dockerfile_args(ROOT / option_values(cmd, "-f")[0])
        for arg in option_values(cmd, "--build-arg"):
            name, _, value = arg.partition("=")
            assert name in declared, f"{cmd}: {name} is not an ARG of the Dockerfile"
            if name == "TORCH_INDEX_URL":
                assert value.endswith("/whl/cpu")


def test_the_trainer_and_serving_images_share_one_torch_version():
    """Bundles trained in the trainer image load in the serving image: the same torch, CPU or CUDA build."""
    serving = dockerfile_args(ROOT / "images" / "Dockerfile.serving")
    trainer = dockerfile_args(ROOT / "images" / "Dockerfile.trainer")
    assert serving["TORCH_VERSION"] == trainer["TORCH_VERSION"]
    assert "cpu" in serving["TORCH_INDEX_URL"] and "cpu" not in trainer["TORCH_INDEX_URL"]  # the GPU build


# --- the values, the kind config, Prometheus and Grafana --------------------------------------------

def test_kind_values_pass_the_chart_schema(render):
    proc = render.lint("--values", str(VALUES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_schema_is_applied_to_the_kind_values(render, tmp_path):
    """The same file with a misspelt key fails: lint really validates this file."""
    values = yaml.safe_load(VALUES.read_text())
    values["training"]["image"]["pullpolicy"] = values["training"]["image"].pop("pullPolicy")
    bad = tmp_path / "values.yaml"
    bad.write_text(yaml.safe_dump(values))
    proc = render.lint("--values", str(bad))
    assert proc.returncode != 0 and "pullpolicy" in proc.stdout + proc.stderr


def test_training_and_serving_fit_a_laptop_without_gpu(render):
    docs = render.docs("--values", str(VALUES))
    config = yaml.safe_load(render.one(docs, "ConfigMap", "cambrian-operator")["data"]["operator.yaml"])
    for part in ("training", "serving"):
        resources = config[part]["resources"]
        assert not [k for k in {**resources.get("requests", {}), **resources.get("limits", {})} if "gpu" in k]
    assert config["training"]["tolerations"] == []


@pytest.fixture(scope="module")
def kind_config_check() -> str:
    """kind's own config loader and validator; built from the Go module proxy when missing."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build-kind-check.sh")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"scripts/build-kind-check.sh failed:\n{proc.stderr}")
        pytest.skip(f"cannot build kind's config validator here: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout.strip().splitlines()[-1]


def test_kind_config_passes_kinds_own_validator(kind_config_check):
    proc = subprocess.run([kind_config_check, str(KIND / "cluster.yaml")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "name=cambrian " in proc.stdout and "nodes=control-plane" in proc.stdout
    common = (ROOT / "scripts" / "kind-common.sh").read_text()
    assert re.search(r"^KIND_DEFAULT_CLUSTER=cambrian\b", common, re.M), "the scripts' default name is the config's"


@pytest.mark.parametrize("mutate, error", [
    (lambda c: c.update(node=c.pop("nodes")), "field node not found"),
    (lambda c: c["nodes"][0].update(role="master"), '"master" is not a valid node role'),
    (lambda c: c.update(name="Cambrian_1"), "is not a valid cluster name"),
])
def test_kinds_validator_rejects_broken_copies_of_the_config(kind_config_check, tmp_path, mutate, error):
    config = yaml.safe_load((KIND / "cluster.yaml").read_text())
    mutate(config)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([kind_config_check, str(path)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and error in proc.stderr, proc.stderr


def manifest(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KIND / name).read_text()) if d]


def find(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def service_url(docs: list[dict], name: str) -> str:
    svc = find(docs, "Service", name)
    (port,) = svc["spec"]["ports"]
    return f"http://{name}.{svc['metadata']['namespace']}.svc:{port['port']}"


def test_operator_and_grafana_read_the_kind_prometheus(render):
    url = service_url(manifest("prometheus.yaml"), "prometheus")
    assert yaml.safe_load(VALUES.read_text())["prometheus"]["url"] == url
    # The operator gets it through its ConfigMap or its environment, wherever the chart puts it.
    docs = render.docs("--values", str(VALUES))
    operator = [render.one(docs, "Deployment", "cambrian-operator"), render.one(docs, "ConfigMap", "cambrian-operator")]
    assert url in json.dumps(operator)
    default = [d for d in render.docs() if d["metadata"]["name"] == "cambrian-operator"]
    assert url not in json.dumps(default), "the kind URL must come from the kind values"
    provisioning = find(manifest("grafana.yaml"), "ConfigMap", "grafana-provisioning")["data"]
    (source,) = yaml.safe_load(provisioning["datasources.yaml"])["datasources"]
    assert source["url"] == url and source["isDefault"] is True


def test_prometheus_mounts_the_config_kind_up_creates(tmp_path):
    (cm_cmd,) = [c for c in dry_run(tmp_path) if "configmap" in c]
    name = cm_cmd[cm_cmd.index("configmap") + 1]
    files = {a.split("=", 1)[1].rsplit("/", 1)[1] for a in cm_cmd if a.startswith("--from-file=")}
    dep = find(manifest("prometheus.yaml"), "Deployment", "prometheus")
    spec = dep["spec"]["template"]["spec"]
    (config_volume,) = [v for v in spec["volumes"] if v.get("configMap", {}).get("name") == name]
    (container,) = spec["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == config_volume["name"]]
    config_arg = next(a for a in container["args"] if a.startswith("--config.file="))
    assert config_arg == f"--config.file={mount['mountPath']}/prometheus.yml" and "prometheus.yml" in files
    prom = yaml.safe_load((ROOT / "manifests" / "prometheus" / "prometheus.yml").read_text())
    assert set(prom["rule_files"]) <= files  # rule files resolve next to the config file


def test_prometheus_scrapes_the_operator_service_of_the_release_kind_up_installs(tmp_path, render):
    (helm,) = [c for c in dry_run(tmp_path) if c[0] == "helm"]
    release, namespace = helm[helm.index("--install") + 1], option_values(helm, "--namespace")[0]
    assert (release, namespace) == ("cambrian", "cambrian")  # what manifests/prometheus/prometheus.yml assumes
    prom = yaml.safe_load((ROOT / "manifests" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "cambrian-operator-metrics"]
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [namespace]
    keep = next(r for r in job["relabel_configs"] if r.get("action") == "keep")
    service, port = keep["regex"].split(";")
    svc = render.one(render.docs("--values", str(VALUES), release=release, namespace=namespace), "Service", service)
    assert port in [p["name"] for p in svc["spec"]["ports"]]


def test_grafana_mounts_exactly_the_dashboards_the_chart_renders(render):
    docs = render.docs("--values", str(VALUES))
    rendered = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in render.by_kind(docs, "ConfigMap")
                if d["metadata"]["labels"].get("grafana_dashboard") == "1"}
    assert len(rendered) == len(list((ROOT / "charts" / "cambrian" / "dashboards").glob("*.json")))
    dep = find(manifest("grafana.yaml"), "Deployment", "grafana")
    (volume,) = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "dashboards"]
    mounted = {(dep["metadata"]["namespace"], s["configMap"]["name"]) for s in volume["projected"]["sources"]}
    assert mounted == rendered
    providers = yaml.safe_load(find(manifest("grafana.yaml"), "ConfigMap", "grafana-provisioning")["data"]["dashboards.yaml"])
    (mount,) = [m for m in dep["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] if m["name"] == "dashboards"]
    assert providers["providers"][0]["options"]["path"] == mount["mountPath"]


@pytest.mark.parametrize("name", ["prometheus.yaml", "grafana.yaml"])
def test_monitoring_pods_run_restricted(name):
    """Non-root, no privilege escalation, read-only root, no capabilities, pinned image versions."""
    dep = next(d for d in manifest(name) if d["kind"] == "Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert re.search(r":v?\d+\.\d+\.\d+$", c["image"]), c["image"]


def test_prometheus_rbac_is_read_only_discovery():
    role = find(manifest("prometheus.yaml"), "ClusterRole", "cambrian-kind-prometheus")
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert verbs == {"get", "list", "watch"} and "secrets" not in resources and "*" not in resources


def test_shell_scripts_parse_and_are_executable():
    for script in (UP, DOWN, ROOT / "scripts" / "build-kind-check.sh"):
        assert os.access(script, os.X_OK), script
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr


def test_readme_quick_start_runs_the_scripts_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start on kind", 1)[1].split("\n## ", 1)[0]
    for text in ("scripts/kind-up.sh", "scripts/kind-down.sh", "get evo,hyp,ro", "port-forward service/grafana",
                 EXAMPLE.rstrip("/")):
        assert text in section, text
    assert readme.index("## Cluster install") < readme.index("## Quick start on kind") < readme.index("## Tests")


@pytest.mark.cluster
def test_monitoring_manifests_are_accepted_by_the_api_server_under_restricted_pod_security(cluster):
    """Server-side dry run with strict field validation on the real control plane; the namespace
    enforces the "restricted" Pod Security Standard, whose admission warns about any workload whose
    pods it would refuse."""
    namespace = find(manifest("prometheus.yaml"), "Namespace", "monitoring")
    namespace["metadata"]["labels"] = {"pod-security.kubernetes.io/enforce": "restricted",
                                       "pod-security.kubernetes.io/warn": "restricted"}
    cluster.apply(namespace)
    try:
        for name in ("prometheus.yaml", "grafana.yaml"):
            out = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(KIND / name),
                                  check=False, timeout=60)
            assert out.returncode == 0, out.stderr
            assert "PodSecurity" not in out.stderr and "unknown field" not in out.stderr, out.stderr
    finally:
        cluster.kubectl("delete", "namespace", "monitoring", "--wait=false", check=False)
