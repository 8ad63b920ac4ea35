#!/usr/bin/env bash
# The upstream images the compose stack starts from (python:3.11-slim, redis:7.2-alpine,
# postgres:16): used when present or pullable; on a host that cannot reach Docker Hub, a
# stand-in built from Debian's packages (debootstrap, then scripts/standin/Dockerfile.*).
#
# Prints the compose variables to use, one NAME=image a line, for `eval`:
#   GPT2FT_PYTHON_IMAGE=... GPT2FT_REDIS_IMAGE=... GPT2FT_POSTGRES_IMAGE=...
# Everything else goes to stderr. Needs root (debootstrap) only when a stand-in is built.
set -euo pipefail
cd "$(dirname "$0")/.."

STANDIN=scripts/standin
ROOT_IMAGE=gpt2ft-standin/debian:bookworm
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { echo "[docker-base] $*" >&2; }

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# Docker Hub answers "no such host" at once where it is unreachable; a slow link gets 120 s.
pullable() { timeout 120 docker pull -q "$1" >/dev/null 2>&1; }

# A minimal Debian root with Python 3.11 and pip, imported as ROOT_IMAGE (~1-3 min, once).
build_root() {
  have_image "$ROOT_IMAGE" && return 0
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends debootstrap >&2
  }
  local dir
  dir=$(mktemp -d /var/tmp/gpt2ft-standin.XXXXXX)
  log "debootstrap $SUITE into $dir (log: $dir.log)"
  if ! debootstrap --variant=minbase \
    --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
    "$SUITE" "$dir" "$MIRROR" >"$dir.log" 2>&1; then
    tail -n 20 "$dir.log" >&2
    return 1
  fi
  rm -f "$dir.log"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' - "$ROOT_IMAGE" >&2
  rm -rf "$dir"
}

# The host's pip settings that matter inside a build: its CA bundle, its local wheel folders
# (find-links: here the CPU build of torch) and any http(s) index. file:// indexes stay out.
pip_setting() { python3 -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.$1='\(.*\)'$/\1/p"; }

python_context() {
  local ctx=$1 dir url
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
  mkdir -p "$ctx/wheels"
  for dir in $(pip_setting find-links) ${PIP_FIND_LINKS:-}; do
    if [[ -d $dir ]]; then cp -n "$dir"/*.whl "$ctx/wheels/" 2>/dev/null || true; fi
  done
  {
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    echo "find-links = /opt/wheels"
    for url in $(pip_setting index-url); do
      if [[ $url == http* ]]; then echo "index-url = $url"; fi
    done
    local extra=()
    for url in $(pip_setting extra-index-url); do
      if [[ $url == http* ]]; then extra+=("$url"); fi
    done
    if ((${#extra[@]})); then echo "extra-index-url = ${extra[*]}"; fi
  } >"$ctx/pip.conf"
  log "python stand-in: $(ls "$ctx/wheels" | wc -l) local wheel(s), pip.conf:"
  sed 's/^/    /' "$ctx/pip.conf" >&2
}

# standin NAME: build gpt2ft-standin/NAME from scripts/standin/Dockerfile.NAME.
standin() {
  local name=$1 tag=$2 ctx
  have_image "$tag" && return 0
  build_root
  ctx=$(mktemp -d)
  cp "$STANDIN"/* "$ctx/"
  if [[ $name == python ]]; then python_context "$ctx"; fi
  log "building $tag"
  docker build --network host -q --build-arg "ROOT_IMAGE=$ROOT_IMAGE" \
    -f "$ctx/Dockerfile.$name" -t "$tag" "$ctx" >&2
  rm -rf "$ctx"
}

# choose VAR UPSTREAM NAME STANDIN_TAG: the upstream image when we have it, else the stand-in.
choose() {
  local var=$1 upstream=$2 name=$3 tag=$4
  if have_image "$upstream" || pullable "$upstream"; then
    echo "$var=$upstream"
  else
    log "$upstream cannot be pulled: using the Debian stand-in $tag"
    standin "$name" "$tag"
    echo "$var=$tag"
  fi
}

docker info >/dev/null 2>&1 || { log "no Docker daemon answers (start dockerd)"; exit 1; }
choose GPT2FT_PYTHON_IMAGE python:3.11-slim python gpt2ft-standin/python:3.11-bookworm
choose GPT2FT_REDIS_IMAGE redis:7.2-alpine redis gpt2ft-standin/redis:7.0-bookworm
choose GPT2FT_POSTGRES_IMAGE postgres:16 postgres gpt2ft-standin/postgres:15-bookworm
