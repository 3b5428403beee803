# syntax=docker/dockerfile:1
# One image for every part of imagine, chosen by the command:
#   imagine-bot (the default) | imagine serve-grpc | imagine serve-http | imagine generate
# CPU build (PyTorch's CPU wheels, no CUDA download):   docker build -t imagine .
# NVIDIA GPUs (CUDA wheels; run with --gpus all):
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 -t imagine:cuda .
#   (cu130 or another CUDA build that pytorch.org lists for torch 2.13 and your driver supports)
# Settings come only from the environment (docker run --env-file .env, or compose's env_file);
# models and data live in the volumes /models and /data. See docs/docker.md.

ARG BASE_IMAGE=debian:bookworm-slim

# Local wheels to install torch from. None by default; a build that must not download torch
# (CI) hands a folder in with --build-context wheels=DIR, which replaces this stage. The one file
# in it keeps the stage from being empty, which some builders refuse to mount.
FROM scratch AS wheels
COPY pyproject.toml /

FROM ${BASE_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
# Debian's own versions: bookworm's Python 3.11 and its security updates, not a pinned snapshot.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/imagine
ENV PATH=/opt/imagine/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from PyTorch's own index: the plain PyPI wheel is the multi-GB CUDA build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_REQUIREMENT=torch==2.13.0
# The version is pinned, in the argument above.
# hadolint ignore=DL3013
RUN --mount=type=bind,from=wheels,target=/wheels \
    pip install --find-links /wheels --index-url "$TORCH_INDEX_URL" "$TORCH_REQUIREMENT"

# The other dependencies in a layer of their own, so that a source change does not reinstall them.
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# imagine itself as a wheel, installed in the last stage: a change to the source then rebuilds a
# small layer rather than the whole environment. .dockerignore lets in only what the wheel needs.
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheelhouse .


FROM ${BASE_IMAGE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin imagine \
 && mkdir -p /data /models \
 && chown imagine:imagine /data /models \
 && chmod 1777 /data /models

COPY --from=build /opt/imagine /opt/imagine
RUN --mount=type=bind,from=build,source=/wheelhouse,target=/wheelhouse \
    /opt/imagine/bin/pip install --no-cache-dir --no-deps --no-index /wheelhouse/imagine-*.whl \
 && /opt/imagine/bin/imagine --help > /dev/null
COPY docker/healthcheck.py /usr/local/bin/imagine-healthcheck

# Paths inside the volumes, and the bot's image API (when IMAGINE_HTTP_PORT is set) on every
# interface of the container: publishing the port decides who reaches it. Everything else (token,
# model, engine) comes from the environment.
ENV PATH=/opt/imagine/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    IMAGINE_DB=/data/imagine.db \
    IMAGINE_HTTP_CACHE=/data/http-cache \
    IMAGINE_HTTP_HOST=0.0.0.0 \
    IMAGINE_MODELS_DIR=/models \
    IMAGINE_CACHE=/models/imagine \
    HF_HOME=/models/huggingface

# Runs as 1000 by default; the volumes are writable (sticky, like /tmp) to any --user as well, so
# `--user "$(id -u):$(id -g)"` can write into a folder of the host.
USER 1000:1000
WORKDIR /data
VOLUME ["/data", "/models"]
# serve-grpc's and serve-http's usual ports; publish the one you run.
EXPOSE 50051 8080

HEALTHCHECK --interval=30s --timeout=10s --start-period=5m --retries=3 \
    CMD ["python3", "/usr/local/bin/imagine-healthcheck"]

# tini passes signals on (docker stop is quick) and reaps child processes.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["imagine-bot"]
