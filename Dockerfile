# css-inference-service as an Infernet container.
#
#   docker build -t css-inference-service .
#   docker run --rm -p 3000:3000 -e OPENAI_API_KEY=sk-... css-inference-service
#
# The node's container config sets "command" (e.g. "--bind=0.0.0.0:3000 --workers=2"),
# which replaces CMD and is passed to the ENTRYPOINT. Every plugins/*/ directory in the
# build context is installed next to the core.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

COPY pyproject.toml README.md /src/
COPY css_core/ /src/css_core/
COPY plugins/ /src/plugins/
RUN set -eux; \
    cd /src; \
    plugins=""; \
    for dir in plugins/*/; do \
        if [ -f "$dir/pyproject.toml" ]; then plugins="$plugins ./$dir"; fi; \
    done; \
    pip install --no-cache-dir . $plugins; \
    cd /; \
    rm -rf /src; \
    css-inference-service plugins

# A .env file in /app is read at start-up (mount one there if you prefer it to -e/env).
RUN useradd --create-home --home-dir /app --uid 10001 --shell /usr/sbin/nologin css
WORKDIR /app
USER css

EXPOSE 3000
ENTRYPOINT ["css-inference-service"]
CMD ["--bind=0.0.0.0:3000", "--workers=2"]
