"""The example Kubernetes manifests and container recipe, checked offline.

Validated here: every manifest against the Kubernetes OpenAPI schemas of version K8S_VERSION, strict (unknown
fields are errors), with kubernetes-validate's bundled schemas; and their agreement with the code: the container's
arguments parse with ``pxdbg produce``'s real parser, the probes and ports meet the metrics server's paths and the
bound endpoint, the key files the producer reads lie on the volumes the Secret and ConfigMap fill, a key pair
written by ``pxdbg keys new`` pasted into the Secret template reads back as a valid certificate, the headless
Service selects the pods and serves the port that ``dns://`` discovery connects to, and the Containerfile copies
paths that exist, installs extras that exist and runs as the Deployment's user.
Not run here: building the image, a cluster (scheduling on a GPU node, the kubelet's probes, cluster DNS).
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import ValidationError, validate

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


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KDIR / name).read_text()) if d]


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    docs = [
        d
        for name in ("producer-deployment.yaml", "producer-service.yaml", "curve-keys-secret.yaml")
        for d in documents(name)
    ]
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
    }
    for doc in manifests.values():
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
    for probe, path in (("livenessProbe", "/healthz"), ("startupProbe", "/healthz"), ("readinessProbe", "/readyz")):
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
    package_dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert {d.split("/")[0] for d in package_dirs.values()} <= set(copied), "every package directory is copied"
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
