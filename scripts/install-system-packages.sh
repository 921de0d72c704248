#!/usr/bin/env bash
# Install the Debian packages listed in infra/apt-packages.txt that are not installed yet.
# Needs root (or sudo) and apt; elsewhere it only lists what is missing.
set -euo pipefail
list="$(dirname "$0")/../infra/apt-packages.txt"
missing=()
while read -r pkg _; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < "$list"
[[ ${#missing[@]} -eq 0 ]] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "missing system packages (install them by hand): ${missing[*]}" >&2; exit 0
fi
sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
echo "installing system packages: ${missing[*]}"
$sudo apt-get update -qq || true
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
