# realtime-channels as a container: a drop-in for the `realtime` service of Supabase's self-host
# docker compose (docs/self-hosting.md).   docker build -t realtime-channels .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHON=python3.11 \
    REALTIME_CHANNELS_PREFIX=/opt/realtime-channels \
    REALTIME_HOST=0.0.0.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY docker ./docker
RUN docker/image.sh install /opt/realtime-channels \
    && useradd --system --user-group --uid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin realtime

USER 10001:10001
EXPOSE 4000

# The command of the realtime service's healthcheck in Supabase's docker/docker-compose.yml.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD curl -sSfL --head -o /dev/null -H "Authorization: Bearer ${ANON_KEY}" http://localhost:4000/api/tenants/realtime-dev/health

CMD ["docker/image.sh", "start"]
