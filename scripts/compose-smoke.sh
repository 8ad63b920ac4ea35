#!/usr/bin/env bash
# make compose-smoke: the deployment, proved by running it. Builds both images with the Docker
# engine, starts docker-compose.yml with docker-compose.cpu.yml (no GPU reserved), drives the
# README's flow with the official openai SDK (upload -> job -> succeeded -> completion), then
# `down -v`. Needs a running Docker daemon and Docker Compose (v2 plugin, or 1.29).
#
#   GPT2FT_SMOKE_PROJECT  compose project name (default gpt2ft-smoke)
#   GPT2FT_SMOKE_TIMEOUT  seconds for the services to become healthy (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
PROJECT=${GPT2FT_SMOKE_PROJECT:-gpt2ft-smoke}
HEALTH_TIMEOUT=${GPT2FT_SMOKE_TIMEOUT:-300}
FILES=(-f docker-compose.yml -f docker-compose.cpu.yml)
started=$SECONDS

log() { echo "[compose-smoke $((SECONDS - started))s] $*"; }
fail() { log "FAILED: $*"; exit 1; }

docker info >/dev/null 2>&1 || fail "no Docker daemon answers (start dockerd; see README)"
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  fail "neither 'docker compose' nor docker-compose is installed"
fi
log "$("${compose[@]}" version | head -n 1)"

# Base images: the upstream ones when they can be had, else Debian stand-ins.
eval "$(scripts/docker-base.sh)"
export GPT2FT_PYTHON_IMAGE GPT2FT_REDIS_IMAGE GPT2FT_POSTGRES_IMAGE
log "base images: $GPT2FT_PYTHON_IMAGE $GPT2FT_REDIS_IMAGE $GPT2FT_POSTGRES_IMAGE"

# The images compose would build, built by the engine directly: builds use the host's network
# (the package index may be reachable only through the host's resolver and proxy).
for image in api worker; do
  log "building gpt2ft-$image:local (Dockerfile.$image)"
  docker build --network host -q --build-arg "PYTHON_IMAGE=$GPT2FT_PYTHON_IMAGE" \
    -f "Dockerfile.$image" -t "gpt2ft-$image:local" . >/dev/null
done
log "images built"

POSTGRES_PASSWORD=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
GPT2FT_DEV_API_KEY=sk-smoke-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
GPT2FT_PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export POSTGRES_PASSWORD GPT2FT_DEV_API_KEY GPT2FT_PORT
unset GPT2FT_BIND  # the default is what we check: loopback only
compose=("${compose[@]}" -p "$PROJECT" "${FILES[@]}")

finish() {
  local code=$?
  if ((code != 0)); then
    log "service states and the last log lines:"
    "${compose[@]}" ps || true
    "${compose[@]}" logs --no-color --tail 60 || true
  fi
  "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  log "stack removed (down -v)"
  if ((code == 0)); then log "PASSED"; else log "FAILED (exit $code)"; fi
}
"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true  # a previous run's leftovers
trap finish EXIT

log "up (project $PROJECT, API on 127.0.0.1:$GPT2FT_PORT)"
"${compose[@]}" up -d --no-build

# health SERVICE: the health status of the service's one container.
health() {
  local id
  id=$("${compose[@]}" ps -q "$1")
  [[ -n $id ]] || { echo missing; return; }
  docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id"
}
deadline=$((SECONDS + HEALTH_TIMEOUT))
until [[ $(health api) == healthy && $(health worker-cpu) == healthy ]]; do
  ((SECONDS < deadline)) || fail "api $(health api), worker-cpu $(health worker-cpu) after ${HEALTH_TIMEOUT}s"
  sleep 3
done
log "api and worker-cpu healthy"
[[ -z $("${compose[@]}" ps -q worker) ]] || fail "the GPU worker was started by the CPU override"

# The API is published on the host's loopback only, unless GPT2FT_BIND says otherwise.
published=$(docker port "$("${compose[@]}" ps -q api)" 8000/tcp)
[[ $published == "127.0.0.1:$GPT2FT_PORT" ]] || fail "API published on '$published', want 127.0.0.1 only"
log "API published on $published only"

GPT2FT_URL=http://127.0.0.1:$GPT2FT_PORT OPENAI_API_KEY=$GPT2FT_DEV_API_KEY \
  "$PYTHON" scripts/openai_flow.py
log "openai SDK flow succeeded against the compose stack"
