#!/usr/bin/env bash
# make docker: a Docker daemon that answers, and Docker Compose. Where none answers (a fresh
# Debian machine, CI), installs Debian's docker.io and docker-compose (1.29) with apt-get and
# starts dockerd in the background (log: /var/log/gpt2ft-dockerd.log). Needs root for that.
# A host whose Docker runs under systemd (or Docker Desktop) is left as it is.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

log() { echo "[docker] $*"; }

answers() { docker info >/dev/null 2>&1; }

have_compose() { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; }

if answers && have_compose; then
  log "daemon answers: $(docker version --format '{{.Server.Version}}')"
  exit 0
fi
if ((EUID != 0)); then
  log "no Docker daemon answers and this is not root: start Docker (or run as root)"
  exit 1
fi

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
have_compose || missing+=(docker-compose)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! answers; then
  log "starting dockerd"
  setsid dockerd >/var/log/gpt2ft-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    answers && break
    sleep 1
  done
fi
if ! answers; then
  log "dockerd does not answer after 60 s; the end of /var/log/gpt2ft-dockerd.log:"
  tail -n 20 /var/log/gpt2ft-dockerd.log
  exit 1
fi
log "daemon answers: $(docker version --format '{{.Server.Version}}')"
