#!/bin/bash
# Build the zincati-py source RPM and noarch RPM from this git tree.
#
#   packaging/build-rpm.sh [-o OUTDIR] [RPMBUILD-ARGS...]
#
# The source tarball holds the files git knows about as they are in the work tree (tracked
# and untracked-but-not-ignored, so uncommitted edits are included; a clean checkout gives
# exactly the committed tree). The results land in OUTDIR (default: build/rpm/ in the tree).
# Extra arguments go to rpmbuild, e.g. `--nodeps` or `--define 'dist .fc42'`; on Fedora
# install the build dependencies first with `dnf builddep packaging/zincati-py.spec`.
set -euo pipefail

top=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
out="$top/build/rpm"
if [ "${1:-}" = "-o" ]; then
    [ $# -ge 2 ] || { echo "build-rpm.sh: -o needs a directory" >&2; exit 64; }
    out=$2
    shift 2
fi

spec="$top/packaging/zincati-py.spec"
version=$(sed -n 's/^Version:[[:space:]]*//p' "$spec")
[ -n "$version" ] || { echo "build-rpm.sh: $spec: no Version:" >&2; exit 65; }

topdir=$(mktemp -d "${TMPDIR:-/tmp}/zincati-py-rpm.XXXXXX")
trap 'rm -rf "$topdir"' EXIT
mkdir -p "$topdir"/{SOURCES,SPECS,BUILD,BUILDROOT,RPMS,SRPMS}

# Source0: the tree under zincati-py-VERSION/ (files deleted in the work tree are skipped).
(
    cd "$top"
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do
            if [ -f "$f" ] || [ -L "$f" ]; then printf '%s\0' "$f"; fi
        done |
        tar --null --files-from=- --owner=0 --group=0 --numeric-owner \
            --transform "s,^,zincati-py-$version/," -czf "$topdir/SOURCES/zincati-py-$version.tar.gz"
)
cp "$top/packaging/zincati-py.sysusers" "$topdir/SOURCES/"
cp "$spec" "$topdir/SPECS/"

rpmbuild -ba --define "_topdir $topdir" "$@" "$topdir/SPECS/zincati-py.spec"

mkdir -p "$out"
find "$topdir/RPMS" "$topdir/SRPMS" -name '*.rpm' -print0 |
    while IFS= read -r -d '' rpm; do
        cp "$rpm" "$out/"
        echo "$out/${rpm##*/}"
    done
