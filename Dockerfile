# css-inference-service as an Infernet container.
#
#   docker build -t css-inference-service .
#   docker run --rm -p 3000:3000 -e OPENAI_API_KEY=sk-... css-inference-service
#
# The node's container config sets "command" (e.g. "--bind=0.0.0.0:3000 --workers=2"),
# which replaces CMD and is passed to the ENTRYPOINT. Every plugins/*/ directory in the
# build context is installed next to the core, and every dependency at its version in uv.lock
# (hash-checked); the build fails if uv.lock does not match the pyproject.toml files.
FROM python:3.12-slim

# the uv that reads uv.lock during the build (scripts/_venv.sh's CSS_UV_VERSION); not in the image
ARG UV_VERSION=0.13.9

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

COPY pyproject.toml uv.lock README.md /src/
COPY css_core/ /src/css_core/
COPY plugins/ /src/plugins/
RUN set -eux; \
    pip install --no-cache-dir --target /tmp/uv "uv==${UV_VERSION}"; \
    cd /src; \
    /tmp/uv/bin/uv export --locked --quiet --no-cache --all-packages --no-emit-workspace --no-default-groups \
        --output-file /tmp/requirements.txt; \
    pip install --no-cache-dir --no-deps --require-hashes -r /tmp/requirements.txt; \
    plugins=""; \
    for dir in plugins/*/; do \
        if [ -f "$dir/pyproject.toml" ]; then plugins="$plugins ./$dir"; fi; \
    done; \
    pip install --no-cache-dir --no-deps . $plugins; \
    pip check; \
    cd /; \
    rm -rf /src /tmp/uv /tmp/requirements.txt; \
    css-inference-service plugins

# A .env file in /app is read at start-up (mount one there if you prefer it to -e/env).
RUN useradd --create-home --home-dir /app --uid 10001 --shell /usr/sbin/nologin css
WORKDIR /app
USER css

EXPOSE 3000
# Healthy while GET /health answers 200 on the port of the service's own --bind (read from
# PID 1's command line, so a node's "command" with another port needs nothing more), or at
# CSS_HEALTHCHECK_URL when set. Python's urllib: the slim image has no curl; proxies bypassed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; a = open('/proc/1/cmdline', 'rb').read().decode().split('\\0'); b = [x[7:] for x in a if x.startswith('--bind=')] + [y for x, y in zip(a, a[1:]) if x == '--bind']; p = (b[-1] if b else ':3000').rsplit(':', 1)[1]; r.build_opener(r.ProxyHandler({})).open(os.environ.get('CSS_HEALTHCHECK_URL') or f'http://127.0.0.1:{p}/health', timeout=4)"]
ENTRYPOINT ["css-inference-service"]
CMD ["--bind=0.0.0.0:3000", "--workers=2"]
