# kargo-bitbucket: the Bitbucket webhook receiver for Kargo.
#
#   docker build -t registry.example.com/platform/kargo-bitbucket:0.1.0 .
#
# The default command runs beside Kargo in a cluster (deploy/, docs/kubernetes.md).
# The image needs no shell and writes nowhere but /tmp, so it runs with a
# read-only root filesystem as the non-root user 65532.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: a wheel of this project, installed with its pinned dependencies
# into a virtual environment that the runtime stage copies as it is.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/kargo-bitbucket \
 && /opt/kargo-bitbucket/bin/pip install --only-binary=:all: /wheels/kargo_bitbucket-*.whl \
 && /opt/kargo-bitbucket/bin/pip uninstall --yes pip setuptools \
 && /opt/kargo-bitbucket/bin/kargo-bitbucket --version

# --- runtime: the same Python, the venv, nothing else of the build.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kargo-bitbucket" \
      org.opencontainers.image.description="Bitbucket Cloud and Data Center webhook receiver that refreshes Kargo Warehouses and Promotions" \
      org.opencontainers.image.licenses="Apache-2.0"
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
