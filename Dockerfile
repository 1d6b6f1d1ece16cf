# geogate container: the proxy with its configuration read from a mounted folder.
#   docker build -t geogate .
#   docker run -p 8080:8080 -p 8081:8081 -v "$PWD/config:/etc/geogate:ro" geogate
#   docker run -p 8080:8080 geogate run-demo      (the demo: proxy and demo meeting server)
# Install steps are the Makefile's: a virtualenv, then pip install of this package.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GEOGATE_CONFIG=/etc/geogate/geogate.toml

WORKDIR /opt/geogate
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
COPY loadtests ./loadtests
# The C compiler builds the gate's native parts (proxy/_native.c) and is then removed.
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null \
    && python -m venv /opt/geogate/.venv \
    && /opt/geogate/.venv/bin/pip install -q --upgrade pip \
    && /opt/geogate/.venv/bin/pip install -q . \
    && /opt/geogate/.venv/bin/python -c "import proxy._native" \
    && apt-get purge -y -qq gcc libc6-dev >/dev/null && apt-get autoremove -y -qq >/dev/null \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin geogate

# The runnable demo default; mount your own folder over /etc/geogate in production.
COPY config /etc/geogate
RUN /opt/geogate/.venv/bin/geogate geoip build /etc/geogate/demo/geoip.csv \
        -o /etc/geogate/demo-geoip.mmdb \
    && sed -i 's#^database = "../build/demo-geoip.mmdb"#database = "demo-geoip.mmdb"#' \
        /etc/geogate/geogate.toml \
    && sed -i 's#^host = "127.0.0.1"#host = "0.0.0.0"#' /etc/geogate/geogate.toml \
    && sed -i 's#^path = "../var/audit.jsonl"#path = "/var/lib/geogate/audit.jsonl"#' \
        /etc/geogate/geogate.toml \
    && mkdir -p /var/lib/geogate && chown geogate /var/lib/geogate

USER geogate
EXPOSE 8080 8081
ENV PATH=/opt/geogate/.venv/bin:$PATH
# `geogate health` asks the admin server's /healthz when [admin] is enabled in the mounted config,
# else checks that the proxy's port accepts connections.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["geogate", "health"]
ENTRYPOINT ["geogate"]
CMD ["serve"]
