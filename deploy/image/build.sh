#!/usr/bin/env bash
# Builds the container images without any registry: FROM scratch, each with one release binary
# and the shared libraries the dynamic loader resolves for it (ldd), running as uid 10001:
#   switchboard:dev        the node (Dockerfile)
#   switchboard-relay:dev  `chaos-tests relay`, the inter-region delay relay of
#                          deploy/compose/regions (Dockerfile.relay)
#   deploy/image/build.sh [TAG [RELAY_TAG]]   (defaults: switchboard:dev switchboard-relay:dev)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
tag="${1:-switchboard:dev}"
relay_tag="${2:-switchboard-relay:dev}"
cd "$root"

scripts/ensure-system-deps
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/switchboard-target}"
# Both binaries in one invocation: one wait for the build lock, one dependency resolution.
cargo build --release -p node -p chaos-tests --bin switchboard --bin chaos-tests

contexts="$(mktemp -d -t switchboard-image-XXXXXX)"
trap 'rm -rf "$contexts"' EXIT

# build_image BINARY DOCKERFILE TAG: a rootfs with BINARY at /<name>, stripped, and what it links.
build_image() {
  local binary="$1" dockerfile="$2" image_tag="$3"
  local name context
  name="$(basename "$binary")"
  context="$contexts/$name"
  mkdir -p "$context/rootfs/etc" "$context/data"
  cp "$binary" "$context/rootfs/$name"
  # Debug info stays in the build directory; the image carries the stripped binary.
  strip --strip-debug "$context/rootfs/$name"
  # Every library ldd resolves, plus the loader itself, at the same paths.
  ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u |
    while read -r lib; do cp -L --parents "$lib" "$context/rootfs/"; done
  printf 'root:x:0:0::/:/%s\nswitchboard:x:10001:10001::/data:/%s\n' "$name" "$name" > "$context/rootfs/etc/passwd"
  printf 'root:x:0:\nswitchboard:x:10001:\n' > "$context/rootfs/etc/group"
  cp "$dockerfile" "$context/Dockerfile"

  echo "image $image_tag contents:" >&2
  (cd "$context/rootfs" && find . -type f | sort | sed 's/^/  /') >&2
  docker build -q -t "$image_tag" "$context"
  docker image inspect "$image_tag" --format '{{.Id}} {{.Size}} bytes' >&2
  echo "$image_tag"
}

build_image "$CARGO_TARGET_DIR/release/switchboard" deploy/image/Dockerfile "$tag"
build_image "$CARGO_TARGET_DIR/release/chaos-tests" deploy/image/Dockerfile.relay "$relay_tag"
