#!/usr/bin/env bash
# `make image`: build the cdr-policy image from deploy/agent/Dockerfile and print its size.
#
#   deploy/agent/build-image.sh [--tag TAG] [--base IMAGE] [--refresh-base] [--python PYTHON] [--context DIR]
#                               [-- DOCKER-BUILD-ARGS]
#   deploy/agent/build-image.sh --engine-only    # step 1 only; exit status 3: Docker cannot run here
#
# 1. Docker Engine: used when it answers; as root, installed (apt-get install docker.io) and started
#    (dockerd in the background, log in /var/log/dockerd.log) when it does not.
# 2. Base image: --base, else the public python:3.12-slim when the engine has it or can pull it, else a
#    Debian trixie base made here from Debian's packages (debootstrap --variant=minbase with python3,
#    python3-venv and ca-certificates; docker import), tagged cdr-policy-base:trixie and reused by later
#    builds (--refresh-base makes it again, for Debian's security updates). Trixie, not bookworm: the
#    image installs the versions the layer pins, and numpy 2.5 needs Python 3.12+ (bookworm has 3.11;
#    trixie 3.13).
# 3. Wheels: cdr-policy and its dependencies, pinned and hashed in layers/shared/requirements.txt
#    (the lock: what the Lambda layer ships), built and downloaded on this machine for the base's
#    Python and C library. A build container cannot be relied on to reach a package index (on these machines it reaches PyPI, but
#    through a TLS proxy whose CA only the host trusts), so the image installs them with --no-index.
# 4. docker build with build/image/ (--context) as the context, then the size.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml")
TAG="cdr-policy-agent:$VERSION"
BASE=""
PUBLIC_BASE="python:3.12-slim"
LOCAL_BASE="cdr-policy-base:trixie"
BASE_PACKAGES="python3,python3-venv,ca-certificates"
REFRESH_BASE=0
ENGINE_ONLY=0
PYTHON="$REPO/.venv/bin/python"
CONTEXT="$REPO/build/image"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKERD_LOG=/var/log/dockerd.log

fail() {
    echo "build-image: error: $*" >&2
    exit 1
}
# Docker Engine cannot run on this machine (the image test skips on exit status 3, and only then).
no_engine() {
    echo "build-image: error: $*" >&2
    exit 3
}
say() { echo "==> $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG=$2; shift 2 ;;
        --base) BASE=$2; shift 2 ;;
        --refresh-base) REFRESH_BASE=1; shift ;;
        --python) PYTHON=$2; shift 2 ;;
        --context) CONTEXT=$2; shift 2 ;;
        --engine-only) ENGINE_ONLY=1; shift ;;
        --) shift; break ;;
        *) fail "unknown argument $1 (usage: build-image.sh [--tag TAG] [--base IMAGE] [--refresh-base] [--python PYTHON] [--context DIR] [--engine-only] [-- DOCKER-BUILD-ARGS])" ;;
    esac
done

is_root() { [ "$(id -u)" = 0 ]; }

# apt_install PACKAGE FAIL: install with apt-get as root, or end through FAIL (fail or no_engine).
apt_install() {
    is_root || "$2" "$1 is missing and only root can install it (apt-get install $1)"
    say "installing $1 (apt-get)"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null 2>&1; }; } \
        || "$2" "apt-get could not install $1"
}

engine() {
    docker info >/dev/null 2>&1 && return 0
    command -v dockerd >/dev/null || apt_install docker.io no_engine
    is_root || no_engine "Docker Engine does not answer (docker info) and only root can start it"
    say "starting dockerd (log: $DOCKERD_LOG)"
    nohup dockerd >>"$DOCKERD_LOG" 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return 0
        kill -0 $! 2>/dev/null || break
        sleep 1
    done
    no_engine "dockerd did not start ($(tail -n 1 "$DOCKERD_LOG" 2>/dev/null))"
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

make_local_base() {
    command -v debootstrap >/dev/null || apt_install debootstrap fail
    is_root || fail "no registry answers and making a base with debootstrap needs root"
    local work
    work=$(mktemp -d /var/tmp/cdr-policy-base.XXXXXX)
    # shellcheck disable=SC2064  # expand now: $work is local
    trap "rm -rf '$work'" EXIT
    say "making $LOCAL_BASE from Debian's packages (debootstrap --variant=minbase trixie, $MIRROR)"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" trixie "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
        || fail "debootstrap failed ($(tail -n 1 "$work/debootstrap.log"))"
    # What an image does not need: the package cache and lists, documentation, translations.
    rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/* \
        "$work"/rootfs/usr/share/doc "$work"/rootfs/usr/share/man "$work"/rootfs/usr/share/locale/* "$work"/rootfs/var/log/*
    tar --numeric-owner -C "$work/rootfs" -c . | docker import \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        --change "LABEL org.cdr-policy.base.packages=$BASE_PACKAGES" \
        --change "LABEL org.cdr-policy.base.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        - "$LOCAL_BASE" >/dev/null || fail "docker import of the debootstrap tree failed"
    rm -rf "$work"
    trap - EXIT
}

choose_base() {
    if [ -n "$BASE" ]; then
        image_exists "$BASE" || docker pull -q "$BASE" >/dev/null || fail "base image $BASE is neither local nor pullable"
        return
    fi
    if image_exists "$PUBLIC_BASE" || docker pull -q "$PUBLIC_BASE" >/dev/null 2>&1; then
        BASE=$PUBLIC_BASE
        return
    fi
    BASE=$LOCAL_BASE
    local packages=""
    image_exists "$LOCAL_BASE" && packages=$(docker image inspect --format '{{ index .Config.Labels "org.cdr-policy.base.packages" }}' "$LOCAL_BASE")
    if [ "$REFRESH_BASE" = 1 ] || [ "$packages" != "$BASE_PACKAGES" ]; then
        make_local_base
    else
        say "no registry answers: reusing $LOCAL_BASE (made $(docker image inspect --format '{{ index .Config.Labels "org.cdr-policy.base.created" }}' "$LOCAL_BASE"); --refresh-base to make it again)"
    fi
}

wheels() {
    local context=$1 target python_version machine libc minor
    # The base's Python (major.minor), machine and C library (glibc minor version).
    target=$(docker run --rm --network none --entrypoint python3 "$BASE" -c \
        'import platform, sys; print("%d.%d %s %s" % (*sys.version_info[:2], platform.machine(), platform.libc_ver()[1].split(".")[1]))') \
        || fail "cannot run python3 in the base image $BASE"
    read -r python_version machine libc <<<"$target"
    # pip takes each manylinux tag the base's glibc can load, newest first (it does not infer older ones).
    local platforms=()
    for minor in $(seq "$libc" -1 17); do platforms+=(--platform "manylinux_2_${minor}_${machine}"); done
    [ -x "$PYTHON" ] || fail "no Python at $PYTHON to build the wheels with (make venv, or --python)"
    say "wheels for Python $python_version (glibc 2.$libc, $machine), pinned to layers/shared/requirements.txt"
    rm -rf "$context/wheels"
    mkdir -p "$context/wheels"
    "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$context/wheels" "$REPO" >"$context/pip.log" 2>&1 \
        || fail "pip wheel could not build cdr-policy ($(tail -n 1 "$context/pip.log"))"
    "$PYTHON" -m pip download --quiet --dest "$context/wheels" --only-binary=:all: \
        --python-version "$python_version" --implementation cp "${platforms[@]}" \
        --requirement "$REPO/layers/shared/requirements.txt" >"$context/pip.log" 2>&1 \
        || fail "pip download could not fetch the dependencies for Python $python_version ($(tail -n 1 "$context/pip.log"))"
}

started=$(date +%s)
engine
[ "$ENGINE_ONLY" = 1 ] && exit 0
choose_base
context=$CONTEXT
wheels "$context"
say "docker build -t $TAG (base $BASE)"
docker build --file "$REPO/deploy/agent/Dockerfile" --build-arg "BASE=$BASE" --tag "$TAG" "$@" "$context" >"$context/build.log" 2>&1 \
    || fail "docker build failed ($(grep -v '^ *$' "$context/build.log" | tail -n 1); the whole log: $context/build.log)"
docker image prune --force --filter label=org.cdr-policy.stage=build >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$TAG")
say "$TAG: $((size / 1000000)) MB (base $BASE), built in $(($(date +%s) - started)) s"
