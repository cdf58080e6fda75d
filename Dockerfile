# kargo-bitbucket: the Bitbucket webhook receiver for Kargo.
#
#   docker build $(.ci/image-args) -t registry.example.com/platform/kargo-bitbucket:0.1.0 .
#
# .ci/image-args gives the build arguments below: VERSION (pyproject.toml's version, which
# is also the chart's version and appVersion), REVISION (the git commit) and SOURCE (the
# git remote). The default command runs beside Kargo in a cluster (deploy/,
# docs/kubernetes.md). The image needs no shell and writes nowhere but /tmp, so it runs
# with a read-only root filesystem as the non-root user 65532.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: the locked dependencies (every file checked against locks/runtime.txt's
# sha256), then a wheel of this project built by the locked setuptools (locks/build.txt),
# all in a virtual environment that the runtime stage copies as it is.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The locks first: this layer is rebuilt only when a lock changes. --no-deps: a lock is
# the whole closure already (pip check below proves it).
COPY locks/runtime.txt locks/build.txt ./locks/
RUN python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps --only-binary=:all: -r locks/build.txt \
 && python -m venv /opt/kargo-bitbucket \
 && /opt/kargo-bitbucket/bin/pip install --require-hashes --no-deps --only-binary=:all: \
        -r locks/runtime.txt
COPY pyproject.toml README.md ./
COPY src ./src
ARG VERSION
RUN test -n "${VERSION}" || { echo "--build-arg VERSION=<pyproject.toml's version> is required (.ci/image-args)" >&2; exit 1; } \
 && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/kargo-bitbucket/bin/pip install --no-deps /wheels/kargo_bitbucket-*.whl \
 && /opt/kargo-bitbucket/bin/pip check \
 && /opt/kargo-bitbucket/bin/pip uninstall --yes pip setuptools \
 && test "$(/opt/kargo-bitbucket/bin/kargo-bitbucket --version)" = "kargo-bitbucket ${VERSION}"

# --- runtime: the same Python, the venv, nothing else of the build.
FROM ${PYTHON_IMAGE}
ARG VERSION
ARG REVISION=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="kargo-bitbucket" \
      org.opencontainers.image.description="Bitbucket Cloud and Data Center webhook receiver that refreshes Kargo Warehouses and Promotions" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
# The venv's python is a link to the base image's /usr/local/bin/python, so
# both stages must use the same PYTHON_IMAGE (pin it by digest if you like:
# --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:...).
COPY --from=build /opt/kargo-bitbucket /opt/kargo-bitbucket
ENV PATH=/opt/kargo-bitbucket/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
WORKDIR /tmp
USER 65532:65532
# 8080: webhooks, /healthz, /readyz. 9090: the admin listener (/metrics), with
# --admin-listen 0.0.0.0:9090 as deploy/ sets it (its default is 127.0.0.1:9090).
EXPOSE 8080 9090
ENTRYPOINT ["kargo-bitbucket"]
CMD ["serve", "--kubernetes", "--listen", "0.0.0.0:8080"]
