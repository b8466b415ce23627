# tunnelguard container image (issue 8).
#
#   docker build -t tunnelguard --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#   docker run --read-only -p 8080:8080 -p 9090:9090 \
#       -e TUNNELGUARD_UPSTREAM=http://app:3000 tunnelguard
#
# With /etc/tunnelguard/config.yaml mounted, `run` serves that file instead of the embedded
# default (see docker-entrypoint).  The image needs no writable path in its default
# single-process mode; `run --workers N` needs a writable /tmp (`--tmpfs /tmp`).
# tests/test_container.py builds and runs this file for real (podman) and lints it (hadolint).

# The fully qualified name resolves the same way in docker, podman and buildah, with or without
# registry short-name configuration.  Both stages use it: the venv's `python` links to it.
ARG PYTHON_IMAGE=docker.io/library/python:3.11-slim

# ---- build: the project's wheel, installed with its dependencies into /opt/venv ----------
FROM ${PYTHON_IMAGE} AS build
# Only the package index is passed in; HTTP(S)_PROXY and NO_PROXY are predefined build args.
ARG PIP_INDEX_URL=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
# `python3 -m venv` works on the official image and on a plain Debian python3 alike.  The
# dependencies and the build backend, as pyproject.toml lists them, get a layer of their own:
# a rebuild after a change to the code alone reuses it instead of downloading them again.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(p['build-system']['requires'] + p['project']['dependencies']))" > /tmp/requirements.txt \
    && /opt/venv/bin/python -m pip install --requirement /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY proxy/ proxy/
# pip, setuptools and wheel leave the venv once the app is in: the runtime stage gets no
# installer.
RUN /opt/venv/bin/python -m pip wheel --no-deps --no-build-isolation --wheel-dir /dist . \
    && /opt/venv/bin/python -m pip install --no-deps /dist/tunnelguard-*.whl \
    && /opt/venv/bin/python -m pip check \
    && /opt/venv/bin/python -m pip uninstall --yes pip setuptools wheel \
    && /opt/venv/bin/tunnelguard --version

# ---- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="tunnelguard" \
      org.opencontainers.image.description="A reverse proxy that turns 200-tunnelled errors into honest HTTP statuses and true metrics" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
COPY --from=build /opt/venv /opt/venv
COPY docker-entrypoint /usr/local/bin/docker-entrypoint
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TUNNELGUARD_LISTEN=0.0.0.0:8080 \
    TUNNELGUARD_ADMIN_LISTEN=0.0.0.0:9090
# A numeric user with no home and no entry in /etc/passwd: nothing in the image is writable
# by it, so the root filesystem can be mounted read-only.
USER 10001:10001
WORKDIR /
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
# No curl in the image: the venv's Python asks the admin listener for /healthz, at the port of
# TUNNELGUARD_ADMIN_LISTEN (a wildcard address is asked on loopback), bypassing any HTTP proxy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request as u; h, _, p = (os.environ.get('TUNNELGUARD_ADMIN_LISTEN') or '0.0.0.0:9090').rpartition(':'); h = h.strip('[]'); h = '127.0.0.1' if h in ('', '0.0.0.0', '::') else h; h = f'[{h}]' if ':' in h else h; u.build_opener(u.ProxyHandler({})).open(f'http://{h}:{p}/healthz', timeout=2)"]
# Exec form: tunnelguard is PID 1 (the entry point execs it), so SIGTERM reaches it and drains.
ENTRYPOINT ["/opt/venv/bin/python", "/usr/local/bin/docker-entrypoint"]
CMD ["run"]
