"""Validate the custom resources of rendered manifests against the CRD schemas in crds/.

kubernetes-validate knows only the Kubernetes API; for Strimzi and CloudNativePG resources
it merely warns. This script checks every resource of a custom API group (any group that
is not a Kubernetes one) against the openAPIV3Schema of its kind and version in
deploy/k8s/crds/, strictly: an object schema that lists properties rejects any other
property, as `kubectl apply --validate=strict` does, unless the schema preserves unknown
fields (`x-kubernetes-preserve-unknown-fields`) or was trimmed there (`x-portal-trimmed`,
see crds/README.md). A custom resource without a schema is an error. Then it checks the
references between them: a KafkaTopic or KafkaNodePool names a Kafka of the same render, a
Database names a Cluster of the same render whose managed roles include the owner.

    python deploy/k8s/tools/validate_crs.py rendered.yaml [more.yaml ...]   # exit 1 on errors
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator

CRDS_DIR = Path(__file__).resolve().parents[1] / "crds"
# Groups served by Kubernetes itself (kubernetes-validate checks those).
KUBERNETES_GROUPS = {"", "apps", "batch", "policy", "autoscaling"}
OPEN_MARKERS = ("x-kubernetes-preserve-unknown-fields", "x-portal-trimmed")


def _group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def is_custom(api_version: str) -> bool:
    """Whether an apiVersion belongs to a custom API group (not a Kubernetes one)."""
    group, _ = _group_version(api_version)
    return group not in KUBERNETES_GROUPS and not group.endswith(".k8s.io")


def to_json_schema(node: Any) -> Any:
    """An openAPIV3Schema as a strict JSON Schema (draft 7)."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    open_ = any(node.get(marker) for marker in OPEN_MARKERS)
    schema = {
        key: to_json_schema(value)
        for key, value in node.items()
        if not key.startswith("x-") and key not in ("nullable", "default", "description")
    }
    if node.get("nullable") and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    if "properties" in schema and "additionalProperties" not in schema and not open_:
        schema["additionalProperties"] = False
    return schema


def load_schemas(crds_dir: Path = CRDS_DIR) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(group, version, kind) → JSON Schema, from every CRD document in crds_dir."""
    schemas: dict[tuple[str, str, str], dict[str, Any]] = {}
    for path in sorted(crds_dir.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                raw = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                schemas[(spec["group"], version["name"], spec["names"]["kind"])] = to_json_schema(
                    raw
                )
    return schemas


def load_documents(paths: Iterable[Path]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every non-empty YAML document of the given files."""
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                yield path, doc


def _where(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('name')}"


def schema_errors(
    docs: list[dict[str, Any]], schemas: dict[tuple[str, str, str], dict[str, Any]]
) -> list[str]:
    """Every schema violation of the custom resources among docs."""
    errors = []
    for doc in docs:
        api_version = str(doc.get("apiVersion", ""))
        if not is_custom(api_version):
            continue
        group, version = _group_version(api_version)
        schema = schemas.get((group, version, str(doc.get("kind"))))
        if schema is None:
            errors.append(
                f"{_where(doc)}: no schema for {api_version} {doc.get('kind')} in {CRDS_DIR}"
            )
            continue
        if not (doc.get("metadata") or {}).get("name"):
            errors.append(f"{_where(doc)}: metadata.name is missing")
        for error in sorted(Draft7Validator(schema).iter_errors(doc), key=str):
            path = ".".join(str(part) for part in error.absolute_path) or "(root)"
            errors.append(f"{_where(doc)}: {path}: {error.message}")
    return errors


def reference_errors(docs: list[dict[str, Any]]) -> list[str]:
    """References between custom resources that point at nothing in the same render."""
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(str(doc.get("kind")), {})[doc["metadata"]["name"]] = doc
    errors = []
    kafkas = by_kind.get("Kafka", {})
    for kind in ("KafkaTopic", "KafkaNodePool"):
        for name, doc in by_kind.get(kind, {}).items():
            cluster = (doc["metadata"].get("labels") or {}).get("strimzi.io/cluster")
            if cluster not in kafkas:
                errors.append(f"{kind}/{name}: strimzi.io/cluster {cluster!r} is no Kafka here")
    clusters = by_kind.get("Cluster", {})
    for name, doc in by_kind.get("Database", {}).items():
        cluster_name = doc["spec"].get("cluster", {}).get("name")
        cluster = clusters.get(cluster_name)
        if cluster is None:
            errors.append(f"Database/{name}: cluster {cluster_name!r} is no Cluster here")
            continue
        roles = {r["name"] for r in cluster["spec"].get("managed", {}).get("roles", [])}
        if doc["spec"].get("owner") not in roles:
            errors.append(
                f"Database/{name}: owner {doc['spec'].get('owner')!r} is not a managed role "
                f"of Cluster/{cluster_name}"
            )
    return errors


def main(argv: list[str]) -> int:
    """Validate the files named in argv; print the errors and return 1 if there are any."""
    if not argv:
        sys.stderr.write("usage: validate_crs.py rendered.yaml [...]\n")
        return 2
    schemas = load_schemas()
    docs = [doc for _, doc in load_documents(Path(arg) for arg in argv)]
    errors = schema_errors(docs, schemas) + reference_errors(docs)
    custom = sum(1 for doc in docs if is_custom(str(doc.get("apiVersion", ""))))
    for error in errors:
        sys.stderr.write(f"ERROR {error}\n")
    sys.stdout.write(f"{custom} custom resources checked, {len(errors)} errors\n")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
