# syntax=docker/dockerfile:1
# Build stage: a virtualenv with exactly the locked dependencies.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
COPY requirements.lock .
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --requirement requirements.lock

# Runtime stage: the venv and the code, nothing else; runs as an unprivileged user.
FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APP_ENV=production \
    HOST=0.0.0.0 \
    PORT=3000 \
    DATABASE_URL=sqlite+aiosqlite:////srv/data/mms.db
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /srv --shell /usr/sbin/nologin app \
 && mkdir -p /srv/data \
 && chown app:app /srv/data
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
COPY app ./app
# PYTHONDONTWRITEBYTECODE stops runtime writes only: compile once here, read at every start.
RUN python -m compileall -q app
USER 10001:10001
EXPOSE 3000
VOLUME ["/srv/data"]
# No curl in a slim image: ask /health with the Python that is already there.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '3000')}/health\", timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "app"]
