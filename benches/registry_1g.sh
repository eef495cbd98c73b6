#!/usr/bin/env bash
# Issue 9, acceptance 5: a 1 GiB layer pushed to and pulled from a local
# docker-registry with bounded memory, next to `ctr images pull` of the same
# image from the same registry in the same run. Not run in CI (minutes of
# IO and ~8 GiB of disk); results go to docs/PERFORMANCE.md by hand.
#
# Needs root, containerd + ctr (1.6), docker-registry, busybox-static,
# GNU time (/usr/bin/time) and a release kiln:
#   cargo build --release -p kiln --bin kiln
#   sudo benches/registry_1g.sh
#
# Every measured command runs under `/usr/bin/time -v`; the script prints
# wall time, throughput (1 GiB / wall time) and peak RSS of that process.
# For `ctr images pull` the transfer runs in the ctr process (containerd
# 1.6's client-side pull), so its RSS is the comparable figure; containerd's
# own RSS is printed for both pulls.
set -euo pipefail

KILN=${KILN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/kiln}
SIZE_MB=${SIZE_MB:-1024}
[ -x "$KILN" ] || { echo "no kiln at $KILN (cargo build --release -p kiln)" >&2; exit 1; }
for t in containerd ctr docker-registry /usr/bin/time /bin/busybox; do
	command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }
done

work=$(mktemp -d /tmp/kiln-bench-1g.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	# Snapshot mounts of the private containerds.
	grep -o " $work[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# A private containerd under $work/$1; prints its socket.
start_containerd() {
	local d=$work/$1
	mkdir -p "$d"
	cat >"$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
EOF
	containerd --config "$d/config.toml" >"$d/log" 2>&1 &
	pids+=($!)
	echo $! >"$d/pid"
	for _ in $(seq 100); do
		ctr --address "$d/containerd.sock" version >/dev/null 2>&1 && break
		sleep 0.1
	done
	echo "$d/containerd.sock"
}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/registry"
cat >"$work/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/registry/data
http:
  addr: 127.0.0.1:$port
  secret: bench
EOF
docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
reg=127.0.0.1:$port

# A busybox base, imported by kiln (no registry involved).
mkdir -p "$work/rootfs/bin" "$work/rootfs/tmp"
cp /bin/busybox "$work/rootfs/bin/busybox"
for a in sh dd cat true; do ln -s busybox "$work/rootfs/bin/$a"; done

measure() { # LABEL LOG COMMAND...: runs it under time -v, prints a row
	local label=$1 log=$2
	shift 2
	/usr/bin/time -v "$@" >"$log.out" 2>"$log"
	local wall rss secs
	wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$log")
	rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$log")
	secs=$(echo "$wall" | awk -F: '{ if (NF==3) print $1*3600+$2*60+$3; else print $1*60+$2 }')
	printf '%-44s %8.1f s %8.1f MiB/s %8.1f MiB peak RSS\n' "$label" "$secs" \
		"$(echo "$SIZE_MB / $secs" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
}

containerd_rss() { # SOCKET-DIR: containerd's VmHWM
	awk '/VmHWM/ { printf "%.1f MiB", $2/1024 }' "/proc/$(cat "$1/pid")/status"
}

# 1. Build the image (a layer of SIZE_MB random bytes) on containerd A.
a=$(start_containerd a)
ns=bench
"$KILN" --containerd-address "$a" --namespace $ns --root "$work/kiln-a" \
	import-rootfs --name busybox:latest "$work/rootfs" >/dev/null
mkdir -p "$work/ctx"
cat >"$work/ctx/Dockerfile" <<EOF
FROM busybox
RUN dd if=/dev/urandom of=/big bs=1M count=${SIZE_MB} 2>/dev/null
EOF
export KILN_NETWORK_MODE=host DOCKER_CONFIG=$work/no-docker-config KILN_CONFIG=$work/no-kilnd.toml
mkdir -p "$DOCKER_CONFIG"
: >"$KILN_CONFIG"
kiln_a=("$KILN" --containerd-address "$a" --namespace $ns --root "$work/kiln-a")
measure "build (${SIZE_MB} MiB layer, gzip)" "$work/build.time" \
	"${kiln_a[@]}" build --progress plain -t $reg/bench/big:1 "$work/ctx"

# 2. Push it (the build is cached: this is the push).
measure "kiln push" "$work/push.time" \
	"${kiln_a[@]}" build --progress plain --push -t $reg/bench/big:1 "$work/ctx"

# 3. Pull it with kiln into containerd B (FROM the pushed image: the pull,
#    unpacked, then a one-line step).
b=$(start_containerd b)
mkdir -p "$work/ctx-pull"
printf 'FROM %s\nRUN true\n' "$reg/bench/big:1" >"$work/ctx-pull/Dockerfile"
measure "kiln pull (FROM, unpacked)" "$work/kiln-pull.time" \
	"$KILN" --containerd-address "$b" --namespace $ns --root "$work/kiln-b" \
	build --progress plain "$work/ctx-pull"
echo "  containerd B peak RSS: $(containerd_rss "$work/b")"

# 4. The same image with ctr into containerd C (unpacked by default).
c=$(start_containerd c)
measure "ctr images pull --plain-http (unpacked)" "$work/ctr-pull.time" \
	ctr --address "$c" --namespace $ns images pull --plain-http $reg/bench/big:1
echo "  containerd C peak RSS: $(containerd_rss "$work/c")"
