#!/usr/bin/env bash
# `cdk deploy`, as far as it runs on one machine: the pinned CDK CLI bootstraps an
# environment in moto's server mode, deploys the reference app into it (every asset
# published, every template accepted), lists what was created, and destroys it again.
#
#   scripts/deploy-local.sh [OUTDIR]        (make deploy-local)
#
# moto answers on localhost (not 127.0.0.1: with an IP address in AWS_ENDPOINT_URL the
# CLI addresses the asset bucket virtual-host style, which moto's server mode cannot
# route). scripts/moto_server.py stands a placeholder in for each resource whose type
# moto's CloudFormation does not implement, custom resources included (their providers
# would run in Docker); the report lists them (README: "cdk deploy on one machine").
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-$ROOT/build/deploy-local}"
PY="${PY:-$ROOT/.venv/bin/python}"
ACCOUNT=123456789012
REGION=us-east-1

rm -rf "$OUT" && mkdir -p "$OUT"
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"
"$PY" "$ROOT/scripts/moto_server.py" -H localhost -p "$PORT" >"$OUT/moto.log" 2>&1 &
MOTO=$!
trap 'kill $MOTO 2>/dev/null || true' EXIT
for _ in $(seq 150); do
  curl -sf "http://localhost:$PORT/moto-api/" >/dev/null && break
  kill -0 $MOTO 2>/dev/null || { echo "moto did not start:"; tail -20 "$OUT/moto.log"; exit 1; }
  sleep 0.2
done

export AWS_ENDPOINT_URL="http://localhost:$PORT" AWS_ACCESS_KEY_ID=testing \
  AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=$REGION AWS_REGION=$REGION \
  CDK_DEFAULT_ACCOUNT=$ACCOUNT CDK_DEFAULT_REGION=$REGION \
  JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20
CDK=(npx --no-install cdk --no-notices --no-version-reporting --ci -o "$OUT/cdk.out")

cd "$ROOT"
echo "== bootstrap (moto on localhost:$PORT)"
"${CDK[@]}" bootstrap "aws://$ACCOUNT/$REGION" >"$OUT/bootstrap.log" 2>&1 || {
  tail -30 "$OUT/bootstrap.log"; exit 1; }
echo "== deploy"
"${CDK[@]}" deploy --all --require-approval never --outputs-file "$OUT/outputs.json" \
  >"$OUT/deploy.log" 2>&1 || { tail -40 "$OUT/deploy.log"; exit 1; }
echo "== what moto holds"
"$PY" "$ROOT/scripts/deploy_local_report.py" "$OUT" | tee "$OUT/report.json"
echo "== destroy"
"${CDK[@]}" destroy --all --force >"$OUT/destroy.log" 2>&1 || { tail -30 "$OUT/destroy.log"; exit 1; }
echo "deploy-local: deployed and destroyed; logs in $OUT"
