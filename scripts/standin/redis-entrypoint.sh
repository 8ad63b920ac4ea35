#!/bin/sh
# Like the official image: without a config file, redis-server listens on every interface of
# the container's private network, so protected mode (loopback only) is turned off.
set -eu
if [ "${1:-}" = redis-server ]; then
  case "${2:-}" in
    *.conf) ;;
    *) shift; set -- redis-server --protected-mode no "$@" ;;
  esac
fi
exec "$@"
