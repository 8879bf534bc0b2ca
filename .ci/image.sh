#!/usr/bin/env bash
# Build the project's image and check it, on a machine without a Docker engine or a registry.
#
# As root: installs buildah, podman, runc and debootstrap when missing; makes a Debian bookworm
# base with debootstrap (its rootfs is cached); builds the top-level Dockerfile on it into
# localhost/cirl:ci (also tagged localhost/cirl:latest, the components' default image); runs
# `cirl --help`, checks the image holds no CUDA build and runs as a non-root user, runs two
# stages inside (synth, prepare) on a bind-mounted folder, then the container tests
# (tests/test_container_runner.py: KFP's DockerRunner through podman). Any failure exits
# non-zero. Idempotent: a second run reuses the cached base and the image's layers.
#
#   .ci/image.sh            build and check
#   .ci/image.sh --clean    remove the cache (base rootfs, image storage) and exit
#
# Environment:
#   CIRL_IMAGE_CACHE  cache folder, outside the repo (default /var/tmp/cirl-image-cache): the
#                     base's rootfs tarball and a private container storage
#   CIRL_WHEELS       local wheel folder for pip (default /opt/wheels when it holds a torch
#                     wheel; then torch comes from there instead of PyTorch's CPU index)
#   CIRL_EXTRA_CA     CA bundle for pip inside the build (default: the host's bundle, which
#                     holds the CA of a TLS-intercepting proxy when there is one)
# See docs/container.md.
set -euo pipefail
trap 'echo "image.sh: error: line $LINENO: \`$BASH_COMMAND\` failed (exit $?)" >&2' ERR

cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${CIRL_IMAGE_CACHE:-/var/tmp/cirl-image-cache}
IMAGE=localhost/cirl:ci
BASE=localhost/cirl-base:bookworm
ROOTFS_TAR=$CACHE/bookworm-rootfs.tar
START=$SECONDS

step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() {
    echo "image.sh: error: $*" >&2
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root: buildah and podman here use a private rootful storage"
case "${1:-}" in
    "" | --clean) ;;
    *) die "unknown argument ${1}; usage: .ci/image.sh [--clean]" ;;
esac

missing=()
for tool in buildah podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    step "installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q buildah podman runc debootstrap
fi

# Private storage and engine config (see docs/container.md for why each setting is there).
mkdir -p "$CACHE"
exec 9>"$CACHE/lock"
flock -w 1800 9 || die "another .ci/image.sh holds $CACHE/lock"
cat >"$CACHE/storage.conf" <<EOF
[storage]
driver = "overlay"
runroot = "$CACHE/run"
graphroot = "$CACHE/graph"
EOF
cat >"$CACHE/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "host"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
export CONTAINERS_STORAGE_CONF=$CACHE/storage.conf CONTAINERS_CONF=$CACHE/containers.conf
export BUILDAH_ISOLATION=chroot

if [[ ${1:-} == --clean ]]; then
    podman system reset -f >/dev/null 2>&1 || true
    rm -rf "$CACHE"
    echo "removed $CACHE"
    exit 0
fi

WORK=$(mktemp -d /var/tmp/cirl-image-run.XXXXXX)
cleanup() {
    local status=$?
    buildah rm --all >/dev/null 2>&1 || true # working containers of a failed build
    podman image prune -f >/dev/null 2>&1 || true # layers of earlier builds of the tag
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT

# The base: Debian bookworm by debootstrap (no registry to pull python:3.11-slim from).
if ! podman image exists "$BASE"; then
    if [[ ! -s $ROOTFS_TAR ]]; then
        step "debootstrap bookworm (cold: about a minute)"
        mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' \
            /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
        mirror=${mirror:-http://deb.debian.org/debian}
        security=$(awk '/^URIs:/ && $2 ~ /security/ {print $2; exit}' \
            /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
        security=${security:-http://deb.debian.org/debian-security}
        debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
            { tail -20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
        printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
            "$mirror" "$mirror" "$security" >"$WORK/rootfs/etc/apt/sources.list"
        rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
        tar -C "$WORK/rootfs" -cf "$ROOTFS_TAR.partial" .
        mv "$ROOTFS_TAR.partial" "$ROOTFS_TAR"
        rm -rf "$WORK/rootfs"
    fi
    step "importing the base $BASE from $ROOTFS_TAR"
    podman import -q --change 'CMD ["/bin/bash"]' "$ROOTFS_TAR" "$BASE" >/dev/null
fi

build=(--layers --network host --build-arg "BASE=$BASE" -t "$IMAGE" -t localhost/cirl:latest)
wheels=${CIRL_WHEELS:-/opt/wheels}
if compgen -G "$wheels/torch-*.whl" >/dev/null; then
    build+=(-v "$wheels:/run/wheels:ro" --build-arg FIND_LINKS=/run/wheels --build-arg TORCH_INDEX=)
fi
extra_ca=${CIRL_EXTRA_CA:-/etc/ssl/certs/ca-certificates.crt}
if [[ -s $extra_ca ]]; then
    build+=(-v "$extra_ca:/run/extra-ca.crt:ro" --build-arg EXTRA_CA=/run/extra-ca.crt)
fi
step "building $IMAGE"
t0=$SECONDS
buildah bud "${build[@]}" "$REPO"
build_s=$((SECONDS - t0))
read -r digest size < <(podman image inspect --format '{{.Digest}} {{.Size}}' "$IMAGE")
step "built $IMAGE in ${build_s}s: digest $digest, $((size / 1000000)) MB"

step "cirl --help in the image"
podman run --rm "$IMAGE" cirl --help | tee "$WORK/help.txt" | head -3
grep -q '^usage: cirl' "$WORK/help.txt" || die "cirl --help printed no usage line"

step "checking the image: non-root user, Python of the venv, torch without CUDA"
podman run --rm "$IMAGE" sh -euc '
    test "$(id -u)" != 0 || { echo "runs as root" >&2; exit 1; }
    test "$(command -v python3)" = /opt/venv/bin/python3
    python3 -c "import torch, kfp; assert torch.version.cuda is None, torch.version.cuda; print(\"torch\", torch.__version__, \"kfp\", kfp.__version__)"
    if pip list 2>/dev/null | grep -i "^nvidia-"; then echo "CUDA wheels in a CPU image" >&2; exit 1; fi'

step "checking the image: its packages are requirements.lock's, version for version"
podman run --rm "$IMAGE" pip freeze --all >"$WORK/freeze.txt"
python3 - "$REPO/requirements.lock" "$WORK/freeze.txt" <<'EOF'
import re
import sys


def pins(text):
    found = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", text, re.M)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in found}


lock, image = (pins(open(path).read()) for path in sys.argv[1:3])
lock.pop("uv", None)  # the venv's own tool, not installed in the image
differ = sorted(n for n in lock.keys() | image.keys() if lock.get(n) != image.get(n))
if differ:
    sys.exit("image.sh: error: the image differs from requirements.lock: " + ", ".join(
        f"{n} {lock.get(n, '-')} (lock) vs {image.get(n, '-')} (image)" for n in differ))
print(f"{len(image)} packages, each at the lock's version")
EOF

step "one stage in the image: cirl synth, then cirl prepare, on a bind-mounted folder"
mkdir -p "$WORK/stage"
chown 1000:1000 "$WORK/stage" # the image's user
t0=$SECONDS
podman run --rm -v "$WORK/stage:/data" "$IMAGE" \
    cirl synth --out /data/raw --n 2 --width 256 --height 192
podman run --rm -v "$WORK/stage:/data" "$IMAGE" \
    cirl prepare --source /data/raw --format folder --out /data/prepared -q \
    --tile 128 --split-by tile >"$WORK/prepare.json"
stage_s=$((SECONDS - t0))
tiles=$(($(wc -l <"$WORK/stage/prepared/manifest.csv") - 1))
((tiles == 8)) || die "prepare wrote $tiles tiles to the manifest, expected 8"
[[ -s $WORK/stage/prepared/dataset_card.json ]] || die "prepare wrote no dataset_card.json"
[[ $(stat -c %u "$WORK/stage/prepared/manifest.csv") == 1000 ]] ||
    die "the manifest does not belong to the image's user (uid 1000)"
step "synth + prepare in the container: ${stage_s}s, $tiles tiles"

step "container tests: KFP's DockerRunner through podman"
[[ -x $REPO/.venv/bin/pytest ]] || die "no $REPO/.venv/bin/pytest: run \`make install\` first"
CIRL_CONTAINER_TESTS=1 CIRL_IMAGE=$IMAGE "$REPO/.venv/bin/pytest" -p no:cacheprovider -q \
    "$REPO/tests/test_container_runner.py"

step "done: $IMAGE ($digest, $((size / 1000000)) MB) in $((SECONDS - START))s"
