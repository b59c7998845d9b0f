# The pyweave router image: `weave launch` runs it as the container `weave`.
#
# No registry is reachable where pyweave is developed, so the base image is a build
# argument: any Debian-like image with python3, python3-venv and ca-certificates will do.
# Make one with debootstrap + docker import (see docs/docker.md):
#   debootstrap --variant=minbase --include=python3,python3-venv,iproute2,iputils-ping,ca-certificates \
#       bookworm rootfs http://deb.debian.org/debian
#   tar -C rootfs -c . | docker import - pyweave/base:bookworm
#   docker build --network host --build-arg BASE=pyweave/base:bookworm -t pyweave/weave:0.1.0 .
# pip fetches cryptography, pyroute2 and docker as wheels from PyPI; it trusts
# the CA bundle at PIP_CERT inside the build (copy your machine's bundle into the base
# image if your network intercepts TLS).
ARG BASE=pyweave/base:bookworm
FROM ${BASE}

ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=${PIP_CERT} PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    WEAVE_STATE_DIR=/var/lib/weave

# Dependencies (and the build backend) first, in a layer of their own: it is rebuilt only
# when pyproject.toml changes, and the source layer below then needs no network.
COPY pyproject.toml /src/
RUN python3 -m venv /opt/pyweave \
    && python3 -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb")); \
print("\n".join(p["build-system"]["requires"] + p["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && /opt/pyweave/bin/pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY setup.py README.md /src/
COPY router /src/router
COPY cli /src/cli
RUN /opt/pyweave/bin/pip install --no-cache-dir --no-deps --no-build-isolation /src \
    && ln -s /opt/pyweave/bin/weave /usr/local/bin/weave \
    && rm -rf /src

VOLUME /var/lib/weave
# `weave launch` passes --state-dir itself (the host's state directory, mounted at the same
# path) and the Docker flags; the CMD is for running the image by hand.
ENTRYPOINT ["/opt/pyweave/bin/python", "-m", "pyweave.router"]
CMD ["--state-dir", "/var/lib/weave"]
