#!/bin/sh
# One pxdbg consumer job (consumers.sub): stream PXDBG_SEED + $1, its digits to digits.npz and the run's JSON
# summary to summary.json, both returned by HTCondor's file transfer.
set -eu
index="$1"
pxdbg="${PXDBG:-pxdbg}"
seed=$(( ${PXDBG_SEED:-1} + index ))
echo "pxdbg consumer $index on $(hostname): stream $seed, ${PXDBG_EVENTS:-1000} events from $PXDBG_ENDPOINTS"
# shellcheck disable=SC2086  # PXDBG_RUN_ARGS is a list of words
exec $pxdbg run --connect "$PXDBG_ENDPOINTS" --seed "$seed" --events "${PXDBG_EVENTS:-1000}" --out digits.npz \
  --json -q --curve-client-secret alice.key_secret --curve-server-public producer.key ${PXDBG_RUN_ARGS:-} > summary.json
