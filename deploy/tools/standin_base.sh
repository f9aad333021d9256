#!/usr/bin/env bash
# Makes a local stand-in for the `python:3.11-slim` base image where no image registry is reachable
# (these machines: ../shared/notes/deploy.md). Debian bookworm's minbase with its Python 3.11 — the
# official image builds Python into /usr/local instead; the stand-in is only for checking that the image
# builds and its processes answer, never for shipping.
#   DOCKER_HOST=... bash deploy/tools/standin_base.sh [ROOTFS_DIR]
set -euo pipefail
ROOTFS="${1:-$(mktemp -d -t standin-rootfs-XXXXXX)}"
MIRROR="${STANDIN_MIRROR:-http://deb.debian.org/debian}"  # Debian's mirror, as apt uses here
if docker image inspect python:3.11-slim >/dev/null 2>&1; then
  echo "python:3.11-slim is already there"; exit 0
fi
echo "== debootstrap bookworm into $ROOTFS from $MIRROR"
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR" >/dev/null
rm -f "$ROOTFS"/usr/lib/python3.11/EXTERNALLY-MANAGED
ln -sf python3 "$ROOTFS/usr/bin/python"
ln -sf pip3 "$ROOTFS/usr/bin/pip"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
  chroot "$ROOTFS" update-ca-certificates >/dev/null
fi
# The machine's pip configuration (index mirror) goes in too, so `pip install` in the build reaches PyPI.
if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$ROOTFS/etc/pip.conf"; fi
tar -C "$ROOTFS" -c . | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - python:3.11-slim >/dev/null
rm -rf "$ROOTFS"
echo "== stand-in python:3.11-slim ready"
