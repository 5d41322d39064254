#!/bin/bash
# Build the wkd Debian package with the standard tools: dpkg-buildpackage, dh, pybuild.
#
# Usage: packaging/build-deb.sh [OUTDIR]        (default OUTDIR: dist/)
# Prints the path of the built wkd_<version>_amd64.deb on its last line.
#
# Needs (Debian 12): apt-get install build-essential debhelper dh-python python3-all \
#     python3-setuptools pybuild-plugin-pyproject python3-pip
# and PyPI access for the two vendored wheels (see debian/README.Debian for why they are
# vendored).  The wheels are fetched here, hash-pinned, before the package build starts, so
# debian/rules itself runs offline as a Debian build should.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-$repo/dist}")
py=${PYTHON:-python3}
cd "$repo"

version=$("$py" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')

missing=$(dpkg-checkbuilddeps packaging/debian/control 2>&1 | sed -n 's/.*Unmet build dependencies: //p' || true)
if [ -n "$missing" ]; then
    echo "build-deb.sh: missing build dependencies: $missing" >&2
    echo "build-deb.sh: apt-get install build-essential debhelper dh-python python3-all python3-setuptools pybuild-plugin-pyproject" >&2
    exit 2
fi

work=$(mktemp -d /tmp/wkd-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
src="$work/wkd-$version"
mkdir -p "$src"

# Stage the source: tracked files plus new, not-ignored ones (so a working tree builds what
# it holds); outside git, the directories the package installs from.
if git rev-parse --git-dir >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard -- \
        wkd units dbus packaging/polkit docs pyproject.toml README.md 'LICENSE*' \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | xargs -0 cp --parents -t "$src"
else
    for f in wkd units dbus packaging/polkit docs pyproject.toml README.md; do
        [ -e "$f" ] && cp -a --parents "$f" "$src"
    done
fi
# pyproject names README.md as the long description; setuptools refuses a missing file.
[ -f "$src/README.md" ] || echo "wkd" > "$src/README.md"
cp -a packaging/debian "$src/debian"
# Debian 12 ships setuptools 66, which predates PEP 639 license expressions
# (license = "SPDX", setuptools >= 77): give it the older table form in the staged copy.
sed -i -E 's/^license = "([^"]+)"/license = { text = "\1" }/' "$src/pyproject.toml"
# The upstream version lives in pyproject.toml; keep the package version in step with it.
sed -i "1s/^wkd ([^)]*)/wkd ($version-1)/" "$src/debian/changelog"

"$py" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 \
    -r packaging/debian/vendor-requirements.txt -d "$src/debian/wheelhouse"

# A Debian package builds against Debian's python3, never a pyenv/venv one on PATH.
(cd "$src" && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1 || {
    tail -n 60 "$work/build.log" >&2
    echo "build-deb.sh: dpkg-buildpackage failed" >&2
    exit 1
}
mkdir -p "$out"
deb=$(ls "$work"/wkd_"$version"-1_*.deb)
cp "$deb" "$out/"
echo "$out/$(basename "$deb")"
