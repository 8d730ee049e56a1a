#!/bin/sh
# One pxdbg producer in an HTCondor slot (producers.sub): bind to this node's first address on a free port, and
# register that endpoint in the rendezvous directory $1. The key files arrive in the job's scratch directory.
set -eu
rendezvous="$1"
pxdbg="${PXDBG:-pxdbg}"
host="${PXDBG_BIND_HOST:-$(hostname -I | cut -d' ' -f1)}"
# a slot shares its node with others: ask the kernel for a free port rather than fixing one
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')"
echo "pxdbg producer on $(hostname): tcp://$host:$port, rendezvous $rendezvous"
# exec: HTCondor's SIGTERM reaches pxdbg itself, which drains and removes its entry
# shellcheck disable=SC2086  # PXDBG_PRODUCE_ARGS is a list of words
exec $pxdbg produce --bind "tcp://$host:$port" --register "$rendezvous" \
  --curve-server-secret producer.key_secret --curve-allow-dir allow ${PXDBG_PRODUCE_ARGS:-}
