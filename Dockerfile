# syntax=docker/dockerfile:1
# The notification service: `notify serve` (uvicorn), one process per container.
#   docker build -t notify .
#   docker run --rm -p 8000:8000 -e NOTIFY_ENV=development notify
# The image defaults to NOTIFY_ENV=production: without a real Redis and JWT key it
# refuses to start rather than run on development defaults.

# Slim Debian + CPython 3.11, the version the lock file was compiled for.
# Pin by digest in the release pipeline (python:3.11-slim-bookworm@sha256:...).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtualenv with the locked dependencies and the service ----------
# checkov:skip=CKV_DOCKER_7: the tag comes from the ARG above (a fixed version),
# which checkov does not resolve.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from the hash-pinned lock (this layer is cached until the
# lock changes). --require-hashes: a tampered or substituted file fails the build.
# Every wheel has a manylinux build for amd64 and arm64: no compiler needed.
COPY deploy/docker/requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
# Then the publisher package (event models, key scheme, publish script) and the
# service itself, built with the locked setuptools (no network fetch).
COPY clients/python ./clients/python
COPY pyproject.toml README.md ./
# The browser client (/v1/client.js) is package data reached through the link
# service/clients/js -> ../../clients/js: both must be in the build tree.
COPY clients/js ./clients/js
COPY service ./service
RUN pip install --no-cache-dir --no-deps --no-build-isolation ./clients/python . \
    && python -m compileall -q /opt/venv

# ---- runtime: the virtualenv and nothing else ----------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# Numeric ids, the same as the pod's runAsUser/runAsGroup: Kubernetes can check
# runAsNonRoot without reading /etc/passwd.
RUN groupadd --system --gid 10001 notify \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin notify
COPY --from=build /opt/venv /opt/venv
# PYTHONUNBUFFERED: log lines leave the process at once (and a crash's last lines
# are not lost in a buffer). PYTHONDONTWRITEBYTECODE: the root filesystem is
# read-only in the pod; the bytecode was compiled in the build stage.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NOTIFY_ENV=production \
    NOTIFY_HOST=0.0.0.0 \
    NOTIFY_PORT=8000
USER 10001:10001
EXPOSE 8000
# For plain Docker/Compose; Kubernetes uses its own probes (deployment.yaml).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health/live', timeout=2)"]
# Exec form: uvicorn is PID 1 and receives SIGTERM itself (a shell would not pass
# it on), drains streams within NOTIFY_SHUTDOWN_GRACE_S (25 s), under the pod's
# terminationGracePeriodSeconds (45 s). One process: Kubernetes scales pods.
CMD ["notify", "serve"]
