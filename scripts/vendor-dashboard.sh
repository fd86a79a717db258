#!/usr/bin/env bash
# Fetches the dashboard's plotting library, uPlot, from npm at the pinned
# version into runtime/src/dashboard/assets/vendor/ (where the binary's
# build takes it from), and checks the files against the hashes recorded
# here. Run it to verify the vendored copy, or, after changing VERSION and
# the hashes, to update it. The binary never fetches anything at run time.
#
# Usage: scripts/vendor-dashboard.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=1.6.32
declare -A SHA256=(
  [uPlot.iife.min.js]=19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f
  [uPlot.min.css]=df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04
)
vendor=runtime/src/dashboard/assets/vendor

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$VERSION" >/dev/null && tar xzf "uplot-$VERSION.tgz")
for file in "${!SHA256[@]}"; do
  got="$(sha256sum "$work/package/dist/$file" | cut -d' ' -f1)"
  if [ "$got" != "${SHA256[$file]}" ]; then
    echo "vendor-dashboard: uplot@$VERSION $file from npm has sha256 $got, expected ${SHA256[$file]}" >&2
    exit 1
  fi
  if [ "${1:-}" = "--check" ]; then
    cmp -s "$work/package/dist/$file" "$vendor/$file" || { echo "vendor-dashboard: $vendor/$file differs from uplot@$VERSION" >&2; exit 1; }
  else
    cp "$work/package/dist/$file" "$vendor/$file"
  fi
done
[ "${1:-}" = "--check" ] || cp "$work/package/LICENSE" "$vendor/uPlot.LICENSE"
echo "uplot@$VERSION: ${!SHA256[*]} match"
