#!/usr/bin/env bash
# Quick start: installs what kiln needs, makes sure a containerd is running,
# imports a busybox base image (from Debian's busybox-static, no registry),
# builds this directory into containerd with kiln, and runs the result with
# ctr. Run as root from anywhere: sudo examples/hello/quickstart.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
top="$(cd "$here/../.." && pwd)"
cd "$top"

bash .ci/install
cargo build --quiet -p kiln
kiln="$top/target/debug/kiln"

sock="${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"
if ! ctr --address "$sock" version >/dev/null 2>&1; then
    echo "starting containerd (log: /var/log/kiln-quickstart-containerd.log)"
    nohup containerd >/var/log/kiln-quickstart-containerd.log 2>&1 &
    for _ in $(seq 100); do
        ctr --address "$sock" version >/dev/null 2>&1 && break
        sleep 0.1
    done
fi

# A busybox root filesystem from Debian's static busybox.
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/root"
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
"$kiln" --containerd-address "$sock" import-rootfs --name busybox:latest --cmd sh "$rootfs"

"$kiln" --containerd-address "$sock" build -t hello "$here"
echo "== ctr run docker.io/library/hello:latest"
ctr --address "$sock" run --rm docker.io/library/hello:latest "kiln-hello-$$"
