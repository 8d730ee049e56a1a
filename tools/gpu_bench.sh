#!/usr/bin/env bash
# The GPU device check of the producer: every GAN of the registry at fp32/tf32/bf16/fp16, today's engine beside the
# folded one, and several batch sizes,
# printing JSON. Needs only torch (the bench imports neither pyzmq nor msgpack) and installs nothing:
# the package is assembled under /tmp and put on PYTHONPATH.
#   bash tools/gpu_bench.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
pkg=$(mktemp -d)
mkdir -p "$pkg/pxdbg"
# -L: src/pxdbg's subpackages are symlinks to the top-level folders; the copy holds the files
cp -rL src/pxdbg/. "$pkg/pxdbg/"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
PYTHONPATH="$pkg" PYTHONUNBUFFERED=1 python3 -m pxdbg bench --producer --device cuda --json "$@"
