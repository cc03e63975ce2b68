#!/usr/bin/env bash
# ensure-debian-package.sh PACKAGE FILE: installs Debian's PACKAGE unless FILE already exists.
set -euo pipefail
package=$1 file=$2
if [ -e "$file" ]; then exit 0; fi
if ! command -v apt-get >/dev/null; then
    echo "$file not found and apt-get is unavailable: install '$package' (or its equivalent) by hand." >&2
    exit 0
fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -q
$sudo apt-get install -y -q "$package"
