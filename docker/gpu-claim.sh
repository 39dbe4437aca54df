#!/bin/sh
# genq-gpu-claim COMMAND...: run COMMAND (a genq worker) on one GPU that no other worker on this
# host holds.
#
# Why: `docker compose up --scale worker=N` gives every replica the same device request, and
# Docker turns `count: 1` into GPU 0 for each of them. So the worker containers see every GPU
# (`count: all`) and each claims one here: an exclusive lock (flock) on $GENQ_GPU_CLAIMS/gpuI,
# a directory all replicas share (a named volume), held by the worker process itself until it
# exits (released by the kernel, even on SIGKILL), then CUDA_VISIBLE_DEVICES=I.
#
# GENQ_GPUS: how many GPUs to share out (default: what torch sees). A CUDA_VISIBLE_DEVICES set
# by hand is kept as it is, with no claim. A replica that finds every GPU held exits 1.
set -eu

claims="${GENQ_GPU_CLAIMS:-/run/genq/gpus}"
export CUDA_DEVICE_ORDER="${CUDA_DEVICE_ORDER:-PCI_BUS_ID}"  # the same numbering everywhere

if [ "$#" -eq 0 ]; then
    echo "usage: genq-gpu-claim COMMAND [ARGS...]" >&2
    exit 2
fi
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    exec "$@"
fi
gpus="${GENQ_GPUS:-$(python -c 'import torch; print(torch.cuda.device_count())')}"
case "$gpus" in
    '' | *[!0-9]*) echo "genq-gpu-claim: GENQ_GPUS must be a number, not '$gpus'" >&2; exit 2 ;;
esac
if [ "$gpus" -eq 0 ]; then
    echo "genq-gpu-claim: no GPU visible in this container (is the NVIDIA Container Toolkit" \
        "installed, and does the service reserve the GPUs?)" >&2
    exit 1
fi
mkdir -p "$claims"
i=0
while [ "$i" -lt "$gpus" ]; do
    exec 9>>"$claims/gpu$i"
    if flock --nonblock 9; then
        export CUDA_VISIBLE_DEVICES="$i"
        echo "genq-gpu-claim: GPU $i of $gpus" >&2
        exec "$@"  # the lock stays with the worker: file descriptor 9 is inherited
    fi
    exec 9>&-
    i=$((i + 1))
done
echo "genq-gpu-claim: all $gpus GPUs are held by other workers; start at most $gpus" \
    "(docker compose up --scale worker=$gpus)" >&2
exit 1
