# Rootfs of the pyoverlay managed (v2) Docker plugin. scripts/build-plugin builds it,
# exports the container filesystem and adds plugin/config.json (the manifest).
#
# No network is needed inside the build: pyoverlay, its dependencies and a pip wheel come
# from the wheels/ directory of the build context (prepared on the host by
# scripts/build-plugin), and iptables is installed with apt only when the base lacks it.
#
#   --build-arg BASE=IMAGE   a Debian bookworm image with Python 3.11 (default
#                            python:3.11-slim-bookworm; the tests use a local mmdebstrap image
#                            that already has iptables, so their build runs offline)
#
# One stage: the plugin is the exported container filesystem, not the image, so the wheels
# removed in the same RUN never reach it.

ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

# libstdc++6: grpcio (the etcd client) is C++; minimal bases lack it.
RUN if ! command -v iptables-restore >/dev/null || ! command -v ip6tables-restore >/dev/null \
        || ! ldconfig -p | grep -q 'libstdc++.so.6 '; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables libstdc++6 \
        && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    fi \
 && mkdir -p /run/docker/plugins /var/lib/pyoverlay

COPY wheels/ /tmp/wheels/
# A venv without pip (pip runs from its wheel), compiled in parallel; nothing kept but the venv.
RUN set -e; \
    pip=$(ls /tmp/wheels/pip-*.whl | tail -n 1); \
    python3 -m venv --without-pip /opt/pyoverlay; \
    /opt/pyoverlay/bin/python "$pip/pip" install --no-cache-dir --no-index --find-links /tmp/wheels \
        --disable-pip-version-check --no-compile --quiet pyoverlay; \
    /opt/pyoverlay/bin/python -m compileall -q -j0 /opt/pyoverlay/lib >/dev/null; \
    rm -rf /tmp/wheels /root/.cache; \
    /opt/pyoverlay/bin/pyoverlay --help >/dev/null

ENV PATH=/opt/pyoverlay/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["/opt/pyoverlay/bin/pyoverlay", "serve"]
