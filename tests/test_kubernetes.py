"""The example Kubernetes manifests and container recipe, checked offline.

Validated here: every manifest against the Kubernetes OpenAPI schemas of version K8S_VERSION, strict (unknown
fields are errors), with kubernetes-validate's bundled schemas; and their agreement with the code: the container's
arguments parse with ``pxdbg produce``'s real parser, the probes and ports meet the metrics server's paths and the
bound endpoint, the key files the producer reads lie on the volumes the Secret and ConfigMap fill, a key pair
written by ``pxdbg keys new`` pasted into the Secret template reads back as a valid certificate, the headless
Service selects the pods and serves the port that ``dns://`` discovery connects to, and the Containerfile copies
paths that exist, installs extras that exist and runs as the Deployment's user.
The custom resources (the Prometheus operator's PodMonitor, KEDA's ScaledObject) are validated against the
schemas that @kubernetes-models generates from those operators' API types (types, enums, required fields; unknown
fields are not caught), run with node from tests/k8s-crd-schemas (npm ci there, or tools/farm-deps.sh).
Not run here: building the image, a cluster (scheduling on a GPU node, the kubelet's probes, cluster DNS, the
operators themselves).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import ValidationError, validate
from ops_helpers import missing_tool

from pxdbg.cli import build_parser
from pxdbg.shared import discovery, security

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

#: The Kubernetes version whose schemas the manifests must satisfy (a release still in upstream support).
K8S_VERSION = "1.30"
REPO = Path(__file__).resolve().parent.parent
KDIR = REPO / "examples" / "kubernetes"
CRD_SCHEMAS = REPO / "tests" / "k8s-crd-schemas"
CORE_FILES = (
    "producer-deployment.yaml",
    "producer-service.yaml",
    "curve-keys-secret.yaml",
    "producer-pdb.yaml",
    "consumers-job.yaml",
)
CRD_FILES = ("producer-podmonitor.yaml", "producer-scaledobject.yaml")


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KDIR / name).read_text()) if d]


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    docs = [d for name in CORE_FILES + CRD_FILES for d in documents(name)]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def producer(manifests) -> dict:
    (container,) = manifests["Deployment/pxdbg-producer"]["spec"]["template"]["spec"]["containers"]
    return container


def test_every_manifest_validates_against_the_schemas(manifests):
    assert set(manifests) == {
        "Deployment/pxdbg-producer",
        "Service/pxdbg-producers",
        "Secret/pxdbg-producer-key",
        "ConfigMap/pxdbg-allowed-consumers",
        "PodDisruptionBudget/pxdbg-producer",
        "Job/pxdbg-consumers",
        "PodMonitor/pxdbg-producer",
        "ScaledObject/pxdbg-producer",
    }
    for doc in (d for name in CORE_FILES for d in documents(name)):
        assert validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


def test_the_validator_catches_mistakes(manifests):
    """The schema check can fail: a misspelt field and a wrongly typed one are errors."""
    bad = copy.deepcopy(manifests["Deployment/pxdbg-producer"])
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(ValidationError):
        validate(bad, K8S_VERSION, strict=True)
    bad = copy.deepcopy(manifests["Service/pxdbg-producers"])
    bad["spec"]["ports"][0]["port"] = [5555]
    with pytest.raises(ValidationError):
        validate(bad, K8S_VERSION, strict=True)


def test_producer_arguments_parse_with_the_real_cli(manifests):
    container = producer(manifests)
    args = build_parser().parse_args(container["args"])
    assert args.command == "produce"
    assert args.device == "cuda" and args.curve_server_secret and args.curve_allow_dir
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_probes_and_ports_meet_the_producer(manifests):
    container = producer(manifests)
    args = build_parser().parse_args(container["args"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == args.metrics_port
    (bind,) = args.bind
    assert bind == f"tcp://*:{ports['frames']}"
    for probe, path in (("livenessProbe", "/healthz"), ("startupProbe", "/readyz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}
    annotations = manifests["Deployment/pxdbg-producer"]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]


def test_key_files_come_from_the_secret_and_the_allow_list_from_the_configmap(manifests):
    container = producer(manifests)
    args = build_parser().parse_args(container["args"])
    pod = manifests["Deployment/pxdbg-producer"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    secret_dir, secret_file = args.curve_server_secret.rsplit("/", 1)
    key_volume = volumes[mounts[secret_dir]["name"]]
    assert key_volume["secret"]["secretName"] == "pxdbg-producer-key"
    assert key_volume["secret"]["defaultMode"] & 0o077 == 0, "the secret key file is readable by its owner only"
    assert secret_file in manifests["Secret/pxdbg-producer-key"]["stringData"]
    allow_volume = volumes[mounts[args.curve_allow_dir]["name"]]
    assert allow_volume["configMap"]["name"] == "pxdbg-allowed-consumers"
    assert all(k.endswith(security.PUBLIC_SUFFIX) for k in manifests["ConfigMap/pxdbg-allowed-consumers"]["data"])
    assert all(m["readOnly"] for m in mounts.values() if m["mountPath"] != "/tmp")
    checkpoint_dir = args.checkpoint.rsplit("/", 1)[0]
    assert "persistentVolumeClaim" in volumes[mounts[checkpoint_dir]["name"]]


def test_secret_template_filled_with_real_keys_gives_working_certificates(tmp_path):
    """Paste `pxdbg keys new` output into the template as its comments say; the mounted files must load."""
    keys = tmp_path / "keys"
    security.new_key_pair(keys, "producer")
    security.new_key_pair(keys, "alice")
    text = (KDIR / "curve-keys-secret.yaml").read_text()
    for placeholder in re.findall(r"^( *)REPLACE WITH THE TEXT OF (\S+)$", text, re.M):
        indent, rel = placeholder
        body = (tmp_path / rel).read_text()
        text = text.replace(
            f"{indent}REPLACE WITH THE TEXT OF {rel}",
            "\n".join(indent + line if line else line for line in body.splitlines()),
        )
    assert "REPLACE" not in text
    secret, configmap = (d for d in yaml.safe_load_all(text) if d)
    assert validate(secret, K8S_VERSION, strict=True) and validate(configmap, K8S_VERSION, strict=True)
    mounted = tmp_path / "mounted"
    mounted.mkdir(mode=0o700)
    for name, content in [*secret["stringData"].items(), *configmap["data"].items()]:
        path = mounted / name
        path.write_text(content)
        path.chmod(0o400 if name.endswith(security.SECRET_SUFFIX) else 0o644)
    assert security.load_secret(mounted / "producer.key_secret") == security.load_secret(keys / "producer.key_secret")
    assert security.load_public(mounted / "alice.key") == security.load_public(keys / "alice.key")


def test_headless_service_is_what_dns_discovery_connects_to(manifests):
    service = manifests["Service/pxdbg-producers"]["spec"]
    assert service["clusterIP"] == "None"
    assert service["publishNotReadyAddresses"] is False, "DNS answers with ready (warmed-up) producers only"
    pod_labels = manifests["Deployment/pxdbg-producer"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()
    frames = next(p for p in service["ports"] if p["name"] == "frames")
    assert frames["targetPort"] == "frames"
    args = build_parser().parse_args(producer(manifests)["args"])
    assert args.bind == [f"tcp://*:{frames['port']}"]
    source = discovery.parse(f"dns://pxdbg-producers.default.svc.cluster.local:{frames['port']}")
    assert source.dynamic


def test_containerfile_builds_what_the_deployment_runs(manifests):
    lines = [
        ln.strip()
        for ln in (KDIR / "Containerfile").read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    instructions = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]
    copied = [src for op, rest in instructions if op == "COPY" for src in shlex.split(rest)[:-1]]
    assert copied and all((REPO / src).exists() for src in copied), copied
    # src/pxdbg's subpackages are symlinks to top-level folders: the image needs the links and what they point at
    links = [p for p in (REPO / "src" / "pxdbg").iterdir() if p.is_symlink()]
    targets = {p.resolve().relative_to(REPO).parts[0] for p in links}
    assert links and targets <= set(copied), "every package directory is copied"
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    installs = [rest for op, rest in instructions if op == "RUN" and "pip install" in rest]
    (install,) = installs
    wanted = re.search(r'"\.\[([a-z,]+)\]"', install).group(1).split(",")
    assert set(wanted) <= extras
    (user,) = [rest for op, rest in instructions if op == "USER"]
    pod = manifests["Deployment/pxdbg-producer"]["spec"]["template"]["spec"]
    assert int(user) == pod["securityContext"]["runAsUser"]
    exposed = {int(p) for op, rest in instructions if op == "EXPOSE" for p in rest.split()}
    assert exposed == {p["containerPort"] for p in producer(manifests)["ports"]}
    (entrypoint,) = [rest for op, rest in instructions if op == "ENTRYPOINT"]
    assert yaml.safe_load(entrypoint) == ["pxdbg"]


def crd_validate(docs: list[dict]) -> list[str | None]:
    """Per document, None or why it fails its operator's schema (tests/k8s-crd-schemas/validate.mjs under node)."""
    if shutil.which("node") is None or not (CRD_SCHEMAS / "node_modules").is_dir():
        missing_tool(
            f"CRD schema validators not installed: (cd {CRD_SCHEMAS} && npm ci), or tools/farm-deps.sh as root"
        )
    proc = subprocess.run(
        ["node", "validate.mjs"], input=json.dumps(docs), capture_output=True, text=True, timeout=60, cwd=CRD_SCHEMAS
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_custom_resources_validate_against_their_operators_schemas():
    docs = [d for name in CRD_FILES for d in documents(name)]
    assert crd_validate(docs) == [None] * len(docs)
    monitor, scaled = copy.deepcopy(docs[0]), copy.deepcopy(docs[1])  # the check can fail
    monitor["spec"]["podMetricsEndpoints"][0]["port"] = 9100  # a named port is a string
    scaled["spec"]["minReplicaCount"] = "1"
    del scaled["spec"]["scaleTargetRef"]["name"]
    errors = crd_validate([monitor, scaled])
    assert "port must be string" in errors[0]
    assert (
        "minReplicaCount must be integer" in errors[1]
        and "scaleTargetRef must have required property name" in errors[1]
    )


def test_producers_run_on_gpu_nodes_only(manifests):
    pod = manifests["Deployment/pxdbg-producer"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_startup_probe_waits_for_the_warm_up(manifests):
    """/readyz is 200 only once the model is loaded and warmed up, so the liveness probe starts after that."""
    probe = producer(manifests)["startupProbe"]
    assert probe["httpGet"]["path"] == "/readyz"
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 300, "five minutes for a checkpoint and CUDA warm-up"


def test_disruption_budget_monitor_and_autoscaler_point_at_the_producers(manifests):
    deployment = manifests["Deployment/pxdbg-producer"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = manifests["PodDisruptionBudget/pxdbg-producer"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["maxUnavailable"] == 1 < deployment["spec"]["replicas"]

    monitor = manifests["PodMonitor/pxdbg-producer"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in producer(manifests)["ports"]} and endpoint["path"] == "/metrics"
    job = pod_labels[monitor["jobLabel"]]  # the job label the rules' up{job=~".*pxdbg.*"} must match
    assert re.fullmatch(".*pxdbg.*", job)

    scaled = manifests["ScaledObject/pxdbg-producer"]["spec"]
    target = scaled["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus" and float(trigger["metadata"]["threshold"]) > 0
    from ops_helpers import metric_names

    assert metric_names(trigger["metadata"]["query"]) == {"pxdbg_producer_pending"}
    assert f'job="{job}"' in trigger["metadata"]["query"]


def test_indexed_consumer_job_runs_pxdbg_run_per_index(manifests):
    job = manifests["Job/pxdbg-consumers"]["spec"]
    assert job["completionMode"] == "Indexed" and job["parallelism"] <= job["completions"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert "nvidia.com/gpu" not in str(container["resources"]), "consumers need no GPU"
    script = container["args"][0]
    (line,) = [ln for ln in script.splitlines() if ln.strip().startswith("pxdbg run ")]
    env = {e["name"]: e["value"] for e in container["env"]}
    values = {**env, "out": "/out/task-00007", "resume": "", "JOB_COMPLETION_INDEX": "7"}
    values["PXDBG_CHECKPOINT_SHA256"] = "ab" * 32
    line = line.replace('"$((PXDBG_SEED + JOB_COMPLETION_INDEX))"', str(int(env["PXDBG_SEED"]) + 7))
    words = shlex.split(re.sub(r"\$(\w+)", lambda m: values[m.group(1)], line.split(" > ")[0].split(" &")[0]))
    args = build_parser().parse_args(words[1:])
    assert args.command == "run" and args.seed == "8" and args.events == 10000 and args.json
    assert discovery.parse(args.connect).dynamic
    served = build_parser().parse_args(producer(manifests)["args"])
    assert (args.model, args.precision) == (served.model, served.precision), "the frames the producers make"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for key in (args.curve_client_secret, args.curve_server_public):
        assert volumes[mounts[key.rsplit("/", 1)[0]]]["secret"]["secretName"] == "pxdbg-consumer-key"
    assert 'mv "$out/summary.json.tmp" "$out/summary.json"' in script, "a summary for pxdbg farm jobs"
    proc = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
