#!/usr/bin/env bash
# Vendor Swagger UI from the npm package swagger-ui-dist into app/static/swagger-ui/,
# so /docs works offline (FastAPI's default page loads it from a CDN).
# Usage: scripts/vendor-swagger-ui.sh VERSION     e.g. scripts/vendor-swagger-ui.sh 5.35.0
# Needs npm (only `npm pack`: no install, nothing global). Idempotent: re-running with the
# same version rewrites the same files.
set -euo pipefail

version="${1:?usage: $0 VERSION (e.g. 5.35.0)}"
package=swagger-ui-dist
cd "$(dirname "$0")/.."
dest=app/static/swagger-ui

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# npm pack downloads the registry tarball (with its integrity check) without installing it.
tarball="$(cd "$tmp" && npm pack --silent "$package@$version" | tail -n 1)"
tar -xzf "$tmp/$tarball" -C "$tmp"   # extracts into $tmp/package/
src="$tmp/package"
actual="$(node -p "require('$src/package.json').version" 2>/dev/null \
  || sed -n 's/^  "version": "\(.*\)",$/\1/p' "$src/package.json")"

# Only what the /docs page loads, plus the licence terms that come with it.
rm -rf "$dest"
mkdir -p "$dest"
for f in swagger-ui-bundle.js swagger-ui.css favicon-32x32.png LICENSE NOTICE; do
  if [ -f "$src/$f" ]; then
    cp "$src/$f" "$dest/$f"
  elif [ "$f" = swagger-ui-bundle.js ] || [ "$f" = swagger-ui.css ] || [ "$f" = LICENSE ]; then
    echo "missing $f in $package@$actual" >&2
    exit 1
  fi
done

cat > "$dest/VERSION" <<TXT
$package $actual
Vendored from the npm registry by scripts/vendor-swagger-ui.sh; served at /docs/static/ by app/docs.py.
Refresh: scripts/vendor-swagger-ui.sh <version>   (then run the tests, incl. tests/test_docs_browser.py)
TXT

echo "vendored $package $actual into $dest:"
ls -l "$dest"
