#!/usr/bin/env bash
# Offline checks of the deployment files: Prometheus rules (promtool check + unit tests), the Prometheus config,
# the Alertmanager config (amtool), every Grafana dashboard query (parsed by promtool), ops/compose.yaml against the
# compose-spec schema, the
# Kubernetes manifests against the Kubernetes schemas (strict: unknown fields fail), the Dockerfile (hadolint) and
# the HAProxy config (haproxy -c). Each validator is first shown a broken file and must reject it, so a validator
# that passes everything cannot hide a mistake.
# Installs what it needs: Debian packages via apt (as root), Python tools into .local/ops-venv from PyPI.
# Nothing else is fetched: the schemas ship inside the Python packages.
#
#   bash ops/check-ops.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source ops/lib.sh

ensure_ops_deps
venv=.local/ops-venv
if ! cmp -s ops/check-requirements.txt "$venv/requirements.txt" 2>/dev/null; then
  say "installing the validators into $venv (PyPI)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r ops/check-requirements.txt
  cp ops/check-requirements.txt "$venv/requirements.txt"
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
k8s_version=1.30.0

# Runs a check that must fail on a deliberately broken file.
must_reject() {
  local what="$1"; shift
  if "$@" >"$scratch/out" 2>&1; then
    say "self-test failed: the $what check accepted a broken file"; cat "$scratch/out" >&2; exit 1
  fi
}

say "prometheus rules: promtool check and unit tests"
promtool check rules ops/prometheus/rules/*.yml
(cd ops/prometheus/tests && promtool test rules ./*.test.yml)
promtool check config --syntax-only ops/prometheus/prometheus.yml
sed 's/\* 60 > 5$/* 60 > 500/' ops/prometheus/rules/alerts.yml >"$scratch/alerts.yml"
cp ops/prometheus/rules/recording.yml "$scratch/recording.yml"
sed 's|\.\./rules/|./|' ops/prometheus/tests/alerts.test.yml >"$scratch/alerts.test.yml"
must_reject "promtool test" sh -c "cd '$scratch' && promtool test rules alerts.test.yml"

say "alertmanager config: amtool check-config, critical alerts reach on-call"
amtool check-config ops/alertmanager/alertmanager.yml >/dev/null
routed=$(amtool config routes test --config.file=ops/alertmanager/alertmanager.yml severity=critical \
  alertname=ImWriterErrors 2>/dev/null)
[ "$routed" = on-call ] || { say "critical alerts are routed to '$routed', not on-call"; exit 1; }
sed 's/^  receiver: on-call$/  receiver: nobody/' ops/alertmanager/alertmanager.yml >"$scratch/alertmanager.yml"
must_reject "amtool" amtool check-config "$scratch/alertmanager.yml"

say "grafana dashboards: every query parses as PromQL (promtool, as recording rules)"
# Grafana's variables become a plain label value; label_values() variable queries keep their selector.
python3 - ops/grafana/dashboards/*.json >"$scratch/dashboard-queries.yml" <<'PY'
import json, re, sys
exprs = []
def walk(value):
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in ("expr", "definition") and isinstance(inner, str):
                exprs.append(inner)
            else:
                walk(inner)
    elif isinstance(value, list):
        for inner in value:
            walk(inner)
for path in sys.argv[1:]:
    with open(path) as f:
        walk(json.load(f))
print("groups:\n  - name: dashboard-queries\n    rules:")
for i, expr in enumerate(exprs):
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", expr)
    expr = match.group(1) if match else expr
    expr = re.sub(r"\$\{?(\w+)\}?", r"\1", expr)
    print(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(expr)}")
PY
[ "$(grep -c 'record:' "$scratch/dashboard-queries.yml")" -ge 40 ] || { say "found too few dashboard queries"; exit 1; }
promtool check rules "$scratch/dashboard-queries.yml" >/dev/null
printf 'groups:\n  - name: broken\n    rules:\n      - record: x:y\n        expr: "sum by (job (up)"\n' >"$scratch/broken.yml"
must_reject "promql" promtool check rules "$scratch/broken.yml"

say "compose file: compose-spec schema"
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec ops/compose.yaml
sed 's/^    restart: unless-stopped$/    restart: unless-stopped\n    restrat: always/' ops/compose.yaml >"$scratch/compose.yaml"
must_reject "compose schema" "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$scratch/compose.yaml"

say "kubernetes manifests: strict schema validation (Kubernetes $k8s_version)"
manifests=()
for file in ops/k8s/*.yaml; do
  [ "$(basename "$file")" = kustomization.yaml ] || manifests+=("$file")
done
"$venv/bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "${manifests[@]}"
sed 's/terminationGracePeriodSeconds:/terminationGracePeriodSecond:/' ops/k8s/deployment.yaml >"$scratch/deployment.yaml"
must_reject "kubernetes schema" "$venv/bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$scratch/deployment.yaml"
for resource in $(sed -n 's/^  - \(.*\.yaml\)$/\1/p' ops/k8s/kustomization.yaml); do
  [ -f "ops/k8s/$resource" ] || { say "kustomization.yaml lists a missing file: $resource"; exit 1; }
done

say "Dockerfile: hadolint"
"$venv/bin/hadolint" Dockerfile
printf 'FROM debian\nRUN apt-get install curl\n' >"$scratch/Dockerfile"
must_reject "hadolint" "$venv/bin/hadolint" "$scratch/Dockerfile"

say "haproxy.cfg: haproxy -c"
# The node host names exist only inside compose; HAProxy resolves them at run time, so unresolvable is fine here.
haproxy -c -q -f ops/haproxy/haproxy.cfg
printf 'defaults\n    mode http\n    timeout tunel 1h\n' >"$scratch/haproxy.cfg"
must_reject "haproxy" haproxy -c -q -f "$scratch/haproxy.cfg"

say "ops checks passed"
