# syntax=docker/dockerfile:1
# priority-extender: a kube-scheduler extender. Build and push:
#   docker build -t REGISTRY/priority-extender:0.1.0 .
#   docker push REGISTRY/priority-extender:0.1.0
# then point deploy/base/kustomization.yaml (images:) at it; see docs/deploy.md.
#
# Two stages on the same pinned base: the build stage installs the package and its dependencies
# into a virtualenv at /opt/venv (every dependency ships a manylinux wheel for CPython 3.11, so no
# compiler is needed even there); the final stage copies only that virtualenv. No pip cache, no
# build tools, no sources in the final image.
#
# The base is pinned by version; pin it by digest as well in your own builds
# (python:3.11.14-slim-bookworm@sha256:...) for byte-for-byte reproducible images.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first (from wheels only: a missing wheel fails the build instead of compiling),
# so that a source change does not reinstall them.
# The versions are the lock's (constraints.txt, as scripts/setup.sh and CI install them).
COPY pyproject.toml README.md constraints.txt ./
RUN mkdir extender && echo '__version__ = "0"' > extender/__init__.py \
 && /opt/venv/bin/pip install --only-binary=:all: -c constraints.txt . \
 && /opt/venv/bin/pip uninstall -y priority-extender \
 && rm -rf extender build *.egg-info
COPY extender ./extender
RUN /opt/venv/bin/pip install --no-deps . \
 # Byte-compile now: the root filesystem is read-only at run time, so nothing is written later.
 && /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib \
 # pip and setuptools are not needed to run the extender.
 && /opt/venv/bin/pip uninstall -y pip setuptools

FROM ${PYTHON_IMAGE}
# A fixed numeric user (the same id as distroless' "nonroot"), so that runAsNonRoot can verify
# it without a name lookup, and runAsUser in the manifests matches.
RUN groupadd --system --gid 65532 extender \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin extender
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    PRIORITY_EXTENDER_LOG_FORMAT=json
USER 65532:65532
# Scheduler port (kube-scheduler's urlPrefix) and admin port (probes, /metrics, explain).
EXPOSE 8888 8889
ENTRYPOINT ["priority-extender"]
CMD ["serve"]
