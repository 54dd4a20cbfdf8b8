#!/bin/sh
# Build a Debian bookworm root file system with Python 3.11 and import it as a local base image,
# for machines that reach Debian's package mirrors but no container registry (`make image`).
# Usage: deploy/debian-base.sh ROOTFS_DIR IMAGE_NAME [MIRROR]   (as root: debootstrap chroots)
set -eu
rootfs=$1
image=$2
mirror=${3:-http://deb.debian.org/debian}
buildah="buildah --storage-driver ${STORAGE_DRIVER:-vfs}"

if [ ! -f "$rootfs/.aisle-base-complete" ]; then
    rm -rf "$rootfs"
    # minbase: dpkg, apt and essentials only. debootstrap does not resolve the dependencies of
    # --include packages fully (python3.11-venv needs python3.11-distutils, the pip wheel...),
    # so the Python packages come from apt inside the new root instead.
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
    chroot "$rootfs" apt-get update -q
    # python3.11-venv: venv + ensurepip for the build stage; tini: PID 1 that forwards SIGTERM
    # so aisle-serve drains; libgomp1: OpenMP for faiss and onnxruntime; ca-certificates: TLS.
    chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends python3.11 python3.11-venv tini libgomp1 ca-certificates
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc \
        "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
    # The python:3.11-slim layout the Containerfile expects: `python` and `python3` on PATH.
    ln -sf python3.11 "$rootfs/usr/bin/python"
    touch "$rootfs/.aisle-base-complete"
fi

# Import the tree as a one-layer image (the `docker import` of buildah).
container=$($buildah from scratch)
$buildah copy "$container" "$rootfs" / >/dev/null
$buildah config --env PATH=/usr/local/bin:/usr/bin:/bin --env LANG=C.UTF-8 \
    --cmd /usr/bin/python3 "$container"
$buildah commit --rm "$container" "$image"
