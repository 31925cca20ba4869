#!/usr/bin/env bash
# Builds the Stock Bazaar image without pulling anything: a FROM scratch image
# holding the host's release binaries, exactly the shared libraries `ldd`
# lists for them (and the loader), /etc/nsswitch.conf for name resolution
# (`bazaar health <service>` is the containers' health check).
#
#   docker/build-image.sh            # after `cargo build --release --workspace --bins`
#   BAZAAR_IMAGE=name:tag docker/build-image.sh
#
# BAZAAR_BIN_DIR picks another directory of binaries (default target/release;
# the Docker test uses the debug ones it was built with), BAZAAR_STRIP=1
# drops their debug info on the way into the image.
#
# glibc >= 2.34 carries the `files` and `dns` NSS modules inside libc.so.6,
# so no libnss_*.so is needed; the script checks the version and adds them
# if an older glibc is found.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin_dir="${BAZAAR_BIN_DIR:-${CARGO_TARGET_DIR:-$root/target}/release}"
image="${BAZAAR_IMAGE:-stock-bazaar:latest}"
bins=(catalog order frontend client bazaar)

for b in "${bins[@]}"; do
  if [ ! -x "$bin_dir/$b" ]; then
    echo "build-image: $bin_dir/$b is missing; run 'cargo build --release --workspace --bins' (or 'make image')" >&2
    exit 1
  fi
done
command -v docker >/dev/null || { echo "build-image: docker is not installed" >&2; exit 1; }

ctx="$(mktemp -d "${TMPDIR:-/tmp}/bazaar-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
rootfs="$ctx/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/bazaar/data" "$rootfs/tmp" "$ctx/db"

# Copies a file to the same path inside the image, following symlinks.
copy_in() {
  local src="$1"
  mkdir -p "$rootfs$(dirname "$src")"
  cp -L "$src" "$rootfs$src"
}

# Every library (and the loader) that ldd lists for a binary.
copy_libs() {
  local lib
  while read -r lib; do
    if [ -n "$lib" ] && [ ! -e "$rootfs$lib" ]; then copy_in "$lib"; fi
  done < <(ldd "$1" | awk '/=> \// { print $3; next } /^[[:space:]]*\// { print $1 }')
}

for b in "${bins[@]}"; do
  if [ "${BAZAAR_STRIP:-0}" = 1 ]; then
    objcopy --strip-debug "$bin_dir/$b" "$rootfs/usr/local/bin/$b"
  else
    cp "$bin_dir/$b" "$rootfs/usr/local/bin/$b"
  fi
  copy_libs "$bin_dir/$b"
done

glibc="$(ldd --version | awk 'NR == 1 { print $NF }')"
if [ "$(printf '%s\n2.34\n' "$glibc" | sort -V | head -n1)" != "2.34" ]; then
  # Older glibc loads the NSS modules with dlopen: ship them too.
  for m in /lib/x86_64-linux-gnu/libnss_files.so.2 /lib/x86_64-linux-gnu/libnss_dns.so.2 \
    /lib/x86_64-linux-gnu/libresolv.so.2; do
    if [ -e "$m" ]; then copy_in "$m"; fi
  done
fi

# Name resolution: /etc/hosts and /etc/resolv.conf are mounted by Docker
# (its embedded DNS resolves the compose service names).
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
printf 'root:x:0:0:root:/:/bin/false\nbazaar:x:10001:10001:bazaar:/bazaar:/bin/false\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nbazaar:x:10001:\n' >"$rootfs/etc/group"

# The shipped config and stocks: every value is overridden by BAZAAR_* variables.
cp "$root/config.yaml" "$rootfs/bazaar/config.yaml"
# The same with a second front-end, for compose's `frontend2` profile
# (BAZAAR_CONFIG=config.frontend2.yaml); its address on the network is fixed.
{ cat "$root/config.yaml"; printf 'extra_frontends:\n  - { id: 2, host: frontend2, port: 8081 }\n'; } \
  >"$rootfs/bazaar/config.frontend2.yaml"
cp "$root/data/stocks.csv" "$rootfs/bazaar/data/stocks.csv"
chmod 1777 "$rootfs/tmp"

cp "$root/docker/Dockerfile" "$ctx/Dockerfile"
echo "build-image: glibc $glibc; $(find "$rootfs" -type f | wc -l) files, $(du -sh "$rootfs" | cut -f1) -> $image"
previous="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
docker build --pull=false -q -t "$image" \
  --label "org.opencontainers.image.revision=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  "$ctx"
# The image this tag named before, if nothing else uses it now.
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
  docker image rm "$previous" >/dev/null 2>&1 || true
fi
