# The pyweave router image.
#
# No registry is reachable where pyweave is developed, so the base image is a build
# argument: make one with debootstrap + docker import (see docs/docker.md), e.g.
#   debootstrap --variant=minbase --include=python3,python3-venv,iproute2 bookworm rootfs
#   tar -C rootfs -c . | docker import - pyweave/base:bookworm
#   docker build --build-arg BASE=pyweave/base:bookworm -t pyweave/weave:0.1.0 .
ARG BASE=debian:bookworm-slim
FROM ${BASE}

ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=${PIP_CERT} PYTHONUNBUFFERED=1 WEAVE_STATE_DIR=/var/lib/weave

COPY pyproject.toml setup.py README.md /src/
COPY router /src/router
COPY cli /src/cli
RUN python3 -m venv /opt/pyweave \
    && /opt/pyweave/bin/pip install --no-cache-dir /src \
    && ln -s /opt/pyweave/bin/weave /usr/local/bin/weave

VOLUME /var/lib/weave
ENTRYPOINT ["/opt/pyweave/bin/python", "-m", "pyweave.router", "--state-dir", "/var/lib/weave"]
