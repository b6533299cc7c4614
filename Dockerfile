# Herald's image: web, worker and beat all run from it (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HERALD_VAR_DIR=/app/var

WORKDIR /app

# The production pins. pgserver (the embedded PostgreSQL of `make run`) is
# left out: in a container the database is the postgres service.
COPY requirements.lock ./
RUN grep -v '^pgserver==' requirements.lock > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .
RUN useradd --system --uid 1000 --no-create-home --home-dir /app herald \
    && mkdir -p /app/var \
    && chown herald /app/var

USER herald
EXPOSE 8000
CMD ["gunicorn", "config.wsgi", "--bind", "0.0.0.0:8000", "--access-logfile", "-", "--no-control-socket"]
