#!/usr/bin/env bash
# Installs Debian's real Fashion-MNIST when it is missing and apt is available.
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ]; then exit 0; fi
if ! command -v apt-get >/dev/null; then
    echo "Fashion-MNIST not found in $dir and apt-get is unavailable;" \
         "bench will look under --data-root (or use --download)." >&2
    exit 0
fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -q
$sudo apt-get install -y -q dataset-fashion-mnist
