#!/bin/sh
# The stock OHIF viewer for tests/test_dicomweb_ohif.py: the npm package @ohif/app ships its
# production build (dist/: index.html, bundles, codecs, a default app-config.js). npm fetches
# the pinned version (checking the registry's integrity), this script checks its SHA-256 too
# and unpacks dist/ into .ohif/<version>/ (git-ignored). Does nothing when that folder is
# there already; without npm it says so and fails (the test then skips).
set -eu
VERSION=3.13.2
SHA256=b189d3963bfc58e9394a9db8c7be75d07beb029ec211dbb126d47b62969dd3f1
DEST="${OHIF_DIR:-$(cd "$(dirname "$0")/.." && pwd)/.ohif}"
target="$DEST/$VERSION"
[ -f "$target/index.html" ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
    echo "fetch-ohif: npm not found; the OHIF viewer test will skip" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@ohif/app@$VERSION" >/dev/null)
tarball="$tmp/ohif-app-$VERSION.tgz"
echo "$SHA256  $tarball" | sha256sum -c --quiet -
tar -xzf "$tarball" -C "$tmp" package/dist
mkdir -p "$DEST"
rm -rf "$target.partial"
mv "$tmp/package/dist" "$target.partial"
mv "$target.partial" "$target"
echo "fetch-ohif: OHIF $VERSION in $target"
