#!/bin/sh
# Builds warren: static binaries with version information, for releases
# and for the container image.
#
#   scripts/build.sh binary OUT        one binary for $GOOS/$GOARCH (default: this machine's)
#   scripts/build.sh release [DIR]     linux/amd64 and linux/arm64 into DIR (default dist/), with SHA256SUMS
#   scripts/build.sh rootfs DIR        the container image's whole file system, for $GOOS/$GOARCH
#
# VERSION and COMMIT come from the environment, or else from git (where
# there is a .git; the Docker build has none and gets them as build
# arguments). Every binary is built with CGO_ENABLED=0, so it is static and
# runs in an empty image; -trimpath keeps the build machine's paths out.
set -eu

cd "$(dirname "$0")/.."

if [ -z "${VERSION:-}" ]; then
	VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
fi
if [ -z "${COMMIT:-}" ]; then
	COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
fi

# The image's user: not root, and no user name the base distributions use
# (65532 is "nonroot" in distroless images too).
IMAGE_UID=65532

binary() {
	out=$1
	CGO_ENABLED=0 go build -trimpath -buildvcs=false \
		-ldflags "-s -w -X main.version=$VERSION -X main.commit=$COMMIT" \
		-o "$out" ./cmd/warren
}

case "${1:-}" in
binary)
	[ $# -eq 2 ] || { echo "usage: $0 binary OUT" >&2; exit 2; }
	binary "$2"
	;;
release)
	dir=${2:-dist}
	mkdir -p "$dir"
	for arch in amd64 arm64; do
		name=warren-$VERSION-linux-$arch
		GOOS=linux GOARCH=$arch binary "$dir/$name"
		echo "$dir/$name"
	done
	(cd "$dir" && sha256sum warren-"$VERSION"-linux-* >SHA256SUMS)
	;;
rootfs)
	[ $# -eq 2 ] || { echo "usage: $0 rootfs DIR" >&2; exit 2; }
	root=$2
	mkdir -p "$root/usr/local/bin" "$root/etc/warren" "$root/run" "$root/tmp"
	binary "$root/usr/local/bin/warren"
	chmod 0755 "$root/etc/warren" "$root/run"
	chmod 1777 "$root/tmp"
	# The user the image runs as, so that its processes have a name, and
	# root's, for host mode (which Docker runs as root: it gives added
	# capabilities to no other user).
	printf 'root:x:0:0:root:/root:/sbin/nologin\nwarren:x:%d:%d:warren:/nonexistent:/sbin/nologin\n' \
		"$IMAGE_UID" "$IMAGE_UID" >"$root/etc/passwd"
	printf 'root:x:0:\nwarren:x:%d:\n' "$IMAGE_UID" >"$root/etc/group"
	;;
*)
	sed -n '2,9s/^# \{0,1\}//p' "$0" >&2
	exit 2
	;;
esac
