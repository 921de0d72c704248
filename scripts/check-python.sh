#!/usr/bin/env bash
# Stop early when the Python labpipe would run on is older than 3.11.
#   check-python.sh [--missing-ok] INTERPRETER...   checks the first interpreter that exists
# --missing-ok: none exists yet (a fresh host, before the system packages bring python3) is not an error.
set -euo pipefail
missing_ok=no
if [[ "${1:-}" == --missing-ok ]]; then missing_ok=yes; shift; fi
for candidate in "$@"; do
  python="$(command -v "$candidate" 2>/dev/null)" || continue
  if "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    exit 0
  fi
  echo "error: $python: labpipe needs Python >= 3.11, this is $("$python" --version 2>&1 | head -1)" >&2
  echo "hint: install Python 3.11 or newer (Debian 12 and Ubuntu 24.04 have it; on Ubuntu 22.04 the deadsnakes" \
    "PPA's python3.11 and python3.11-venv), then: make install PYTHON=python3.11" >&2
  exit 1
done
[[ $missing_ok == yes ]] && exit 0
echo "error: no Python interpreter found (looked for: $*)" >&2
echo "hint: apt-get install python3 python3-venv (Python >= 3.11), or make install PYTHON=/path/to/python3.11" >&2
exit 1
