#!/usr/bin/env bash
# Install the Debian packages of infra/apt-packages.txt that this host's roles need and that are missing.
#
#   LABPIPE_ROLES=backup,dev   the extras this host installs (make passes EXTRAS; default all,dev); core always
#   LABPIPE_SKIP_APT=1         install nothing, only list what is missing (packages managed another way)
#   LABPIPE_APT_DRY_RUN=1      say what would be installed and skipped, with the package lists already here
#   LABPIPE_APT_LIST=FILE      another package list (tests)
#
# Runs as root, or as a user with sudo. Without apt-get it lists what is missing and goes on; as a user without
# sudo it stops with the list and the two ways on. A package this host's apt does not offer (chromium on Ubuntu)
# is skipped with the reason from the list.
set -euo pipefail
list="${LABPIPE_APT_LIST:-$(dirname "$0")/../infra/apt-packages.txt}"
every_role="radio seg pose mei registry backup vms calcium records demo bench napari slurm"

wanted=" core "
IFS=',' read -ra requested <<< "${LABPIPE_ROLES:-all,dev}"
for role in "${requested[@]}"; do
  role="${role//[[:space:]]/}"
  case "$role" in
    all) wanted+="$every_role " ;;
    training) wanted+="mei " ;;  # the mei extra's former name
    "") ;;
    *) wanted+="$role " ;;
  esac
done

missing=()
declare -A reason
while read -r pkg roles rest; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  if [[ -z "$roles" || "$roles" == \#* ]]; then  # `package  # why`: a line without roles is core
    rest="$roles $rest"
    roles=core
  fi
  needed=no
  IFS=',' read -ra line_roles <<< "$roles"
  for r in "${line_roles[@]}"; do
    [[ "$wanted" == *" $r "* ]] && needed=yes
  done
  [[ $needed == yes ]] || continue
  [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" == "install ok installed" ]] && continue
  missing+=("$pkg")
  why="${rest#*#}"
  reason[$pkg]="${why# }"
done < "$list"
[[ ${#missing[@]} -eq 0 ]] && exit 0

report() {  # $1: what is wrong; then the packages named in "$@" with their reasons
  echo "$1" >&2
  shift
  for pkg in "$@"; do printf '  %-16s %s\n' "$pkg" "${reason[$pkg]}" >&2; done
}

if [[ "${LABPIPE_SKIP_APT:-}" == 1 ]]; then
  report "LABPIPE_SKIP_APT=1: not installing these missing Debian packages (install them if this host needs them):" \
    "${missing[@]}"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  report "no apt-get on this host: install these (or their equivalents) by hand:" "${missing[@]}"
  exit 0
fi
dry_run="${LABPIPE_APT_DRY_RUN:-}"
sudo=()
if [[ $dry_run != 1 && $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then
    sudo=(sudo)
  else
    report "error: these Debian packages are missing and installing them needs root (there is no sudo):" \
      "${missing[@]}"
    echo "hint: as root, apt-get install ${missing[*]}; or go on without them: LABPIPE_SKIP_APT=1 make install" >&2
    exit 1
  fi
fi

if [[ $dry_run != 1 ]]; then
  echo "updating the package lists for: ${missing[*]}"
  ${sudo[@]+"${sudo[@]}"} apt-get update -qq || echo "warning: apt-get update failed; using the lists already here" >&2
fi
offered=()
not_offered=()
for pkg in "${missing[@]}"; do
  # read whole, not piped into `grep -q`: its early exit would fail the pipeline (pipefail) on a match
  policy="$(apt-cache policy "$pkg" 2>/dev/null || true)"
  if [[ "$policy" == *"Candidate: "* && "$policy" != *"Candidate: (none)"* ]]; then
    offered+=("$pkg")
  else
    not_offered+=("$pkg")
  fi
done
if [[ ${#not_offered[@]} -gt 0 ]]; then
  report "skipped, this host's apt does not offer them (see docs/install.md):" "${not_offered[@]}"
fi
[[ ${#offered[@]} -eq 0 ]] && exit 0
if [[ $dry_run == 1 ]]; then
  echo "would install: ${offered[*]}"
  exit 0
fi
echo "installing system packages: ${offered[*]}"
${sudo[@]+"${sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${offered[@]}"
