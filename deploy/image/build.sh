#!/usr/bin/env bash
# Builds the switchboard container image without any registry: FROM scratch, with the release
# binary and the shared libraries the dynamic loader resolves for it (ldd), running as uid 10001.
#   deploy/image/build.sh [TAG]        (default tag: switchboard:dev)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
tag="${1:-switchboard:dev}"
cd "$root"

scripts/ensure-system-deps
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/switchboard-target}"
cargo build --release -p node --bin switchboard
binary="$CARGO_TARGET_DIR/release/switchboard"

context="$(mktemp -d -t switchboard-image-XXXXXX)"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/rootfs/etc" "$context/data"
cp "$binary" "$context/rootfs/switchboard"
# Debug info stays in the build directory; the image carries the stripped binary.
strip --strip-debug "$context/rootfs/switchboard"
# Every library ldd resolves, plus the loader itself, at the same paths.
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u |
  while read -r lib; do cp -L --parents "$lib" "$context/rootfs/"; done
printf 'root:x:0:0::/:/switchboard\nswitchboard:x:10001:10001::/data:/switchboard\n' > "$context/rootfs/etc/passwd"
printf 'root:x:0:\nswitchboard:x:10001:\n' > "$context/rootfs/etc/group"
cp deploy/image/Dockerfile "$context/Dockerfile"

echo "image contents:" >&2
(cd "$context/rootfs" && find . -type f | sort | sed 's/^/  /') >&2
docker build -q -t "$tag" "$context"
docker image inspect "$tag" --format '{{.Id}} {{.Size}} bytes' >&2
echo "$tag"
