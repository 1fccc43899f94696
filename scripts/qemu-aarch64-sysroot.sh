#!/usr/bin/env bash
# Assemble an aarch64 sysroot in which qemu-user runs CPython 3.11 and numpy, so that the
# tests can run the aarch64 device bundle (and a rasp4b artifact) on an x86_64 machine:
#
#     qemu-aarch64 -L build/qemu-aarch64/sysroot \
#         build/qemu-aarch64/sysroot/usr/bin/python3.11 ...
#
# The Debian arm64 packages come through a private apt configuration (its own sources,
# state and cache under build/qemu-aarch64/apt): the host's dpkg architectures, package
# lists and installed packages are left untouched, and root is not needed. The packages are
# only unpacked (dpkg-deb -x), never installed. numpy is the aarch64 wheel of the version
# pinned in requirements.lock, unpacked into build/qemu-aarch64/site-packages.
#
# Usage: scripts/qemu-aarch64-sysroot.sh [OUT]      (default OUT: build/qemu-aarch64)
# Environment: PIP (default .venv/bin/pip). The Debian sources are the machine's own
# (/etc/apt), read for the arm64 architecture.
# Writes OUT/.assembled last, listing the package versions, so a half-built sysroot is
# never mistaken for a finished one.
set -euo pipefail

OUT=$(realpath -m "${1:-build/qemu-aarch64}")
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# What python3.11 (minimal + stdlib with its extension modules) and the TVM runtime
# (libstdc++) need at run time: the shared libraries of their Depends, closed over
# shared-library dependencies. Not the packages' maintainer-script chains (perl, dpkg,
# media-types): nothing here is configured, only unpacked. The check below fails the build
# if a library that an ELF file in the sysroot needs is missing.
PACKAGES=(
  libc6 libgcc-s1 libstdc++6
  python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
  zlib1g libexpat1 libssl3 libffi8 libbz2-1.0 liblzma5 libcrypt1 libdb5.3 libuuid1
  libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libnsl2 libtirpc3
  libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 libcom-err2
)

for tool in apt-get dpkg-deb qemu-aarch64 aarch64-linux-gnu-readelf; do
  command -v "$tool" >/dev/null || { echo "$0: needs $tool (make setup installs it)" >&2; exit 1; }
done
[ -r "$KEYRING" ] || { echo "$0: needs $KEYRING (Debian package debian-archive-keyring)" >&2; exit 1; }
[ -x "$PIP" ] || { echo "$0: needs $PIP (make .venv/.installed)" >&2; exit 1; }

rm -rf "$OUT/sysroot" "$OUT/site-packages" "$OUT/.assembled"
APT="$OUT/apt"
mkdir -p "$APT/state/lists/partial" "$APT/cache/archives/partial" "$APT/sources.list.d" \
         "$APT/preferences.d" "$APT/debs" "$OUT/sysroot" "$OUT/site-packages"
: > "$APT/status"
# The machine's own Debian sources, as apt is set up here, read for arm64.
shopt -s nullglob
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && cp "$f" "$APT/sources.list.d/$(basename "$f" | sed 's/^sources\.list$/main.list/')"
done
shopt -u nullglob
APT_OPTS=(
  -o "Dir::State=$APT/state" -o "Dir::State::status=$APT/status" -o "Dir::Cache=$APT/cache"
  -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$APT/sources.list.d"
  -o Dir::Etc::Preferences=/dev/null -o "Dir::Etc::PreferencesParts=$APT/preferences.d"
  -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o Debug::NoLocking=1
  -o "APT::Sandbox::User=$(id -un)"
)

echo "qemu sysroot: Debian arm64 package lists"
apt-get "${APT_OPTS[@]}" -qq update
echo "qemu sysroot: downloading ${#PACKAGES[@]} packages"
rm -f "$APT/debs"/*.deb
(cd "$APT/debs" && apt-get "${APT_OPTS[@]}" -qq download "${PACKAGES[@]/%/:arm64}")
for deb in "$APT/debs"/*.deb; do
  dpkg-deb -x "$deb" "$OUT/sysroot"
done

# Every shared library an ELF file of the sysroot needs must be in the sysroot.
missing=$(
  find "$OUT/sysroot" -type f \( -name '*.so*' -o -path '*/bin/*' \) -print0 |
    xargs -0 sh -c 'aarch64-linux-gnu-readelf -d "$@" 2>/dev/null; true' readelf |
    sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort -u |
    while read -r lib; do
      [ -n "$(find "$OUT/sysroot" -name "$lib" -print -quit)" ] || echo "$lib"
    done
)
if [ -n "$missing" ]; then
  echo "$0: the sysroot lacks these libraries; add their packages to PACKAGES:" $missing >&2
  exit 1
fi

NUMPY=$(sed -n 's/^numpy==//p' requirements.lock)
[ -n "$NUMPY" ] || { echo "$0: no numpy pin in requirements.lock" >&2; exit 1; }
echo "qemu sysroot: numpy $NUMPY for aarch64"
"$PIP" install -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux_2_28_aarch64 --python-version 3.11 --implementation cp \
  --target "$OUT/site-packages" "numpy==$NUMPY"

# The proof that it runs: the emulated interpreter imports numpy and computes.
got=$(PYTHONHOME="$OUT/sysroot/usr" PYTHONPATH="$OUT/site-packages" PYTHONNOUSERSITE=1 \
  qemu-aarch64 -L "$OUT/sysroot" "$OUT/sysroot/usr/bin/python3.11" -c \
  'import platform, numpy; print(platform.machine(), numpy.__version__, int(numpy.arange(4).sum()))')
[ "$got" = "aarch64 $NUMPY 6" ] || { echo "$0: emulated python printed '$got'" >&2; exit 1; }

{
  echo "# aarch64 sysroot for qemu-user; Debian arm64 packages and numpy wheel"
  for deb in "$APT/debs"/*.deb; do
    dpkg-deb --showformat='${Package} ${Version}\n' -W "$deb"
  done
  echo "numpy $NUMPY"
} > "$OUT/.assembled"
echo "qemu sysroot: $OUT ready ($(du -sh "$OUT/sysroot" | cut -f1) sysroot)"
