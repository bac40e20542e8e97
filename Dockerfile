# jaxvideo server image (docs/DEPLOY.md, "Docker"). The JAX flavour is a build argument:
#
#   docker build -t jaxvideo .                                         # CPU (the default)
#   docker build -t jaxvideo:cuda12 --build-arg JAX_EXTRA=cuda12 .     # NVIDIA GPUs
#   docker build -t jaxvideo:tpu --build-arg JAX_EXTRA=tpu .           # Cloud TPU VMs
#
#   docker run -d --stop-timeout 60 -p 8000:8000 -v jaxvideo-data:/var/lib/jaxvideo jaxvideo  # demo models
#
# Real models: mount the converted folders and a serve config, e.g.
#   docker run -d --gpus all --ipc=host --stop-timeout 60 -p 8000:8000 -v /models:/models:ro \
#     -v /etc/jaxvideo/serve.yaml:/etc/jaxvideo/serve.yaml:ro \
#     -e JAXVIDEO_CONFIG=/etc/jaxvideo/serve.yaml -e JAXVIDEO_API_KEY=change-me \
#     -v jaxvideo-data:/var/lib/jaxvideo -v jaxvideo-cache:/var/cache/jaxvideo jaxvideo:cuda12
#
# ffmpeg (video encoding) is the binary inside the imageio-ffmpeg wheel: no apt package needed.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the jaxvideo wheel --------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY jaxvideo ./jaxvideo
COPY webapp ./webapp
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime ----------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
# cpu | cuda12 | tpu: the extra of the `jax` package installed next to jaxvideo.
ARG JAX_EXTRA=cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/jaxvideo/.venv \
    PATH=/opt/jaxvideo/.venv/bin:$PATH
COPY --from=build /wheels /tmp/wheels
RUN python -m venv /opt/jaxvideo/.venv \
    && pip install "jax[${JAX_EXTRA}]" /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && python -c "import imageio_ffmpeg; print('ffmpeg', imageio_ffmpeg.get_ffmpeg_exe())"

# The same layout as the systemd unit (deploy/jaxvideo.service), so a serve config works in
# both: the job store and outputs under /var/lib/jaxvideo, caches (demo models, and
# server.compilation_cache_dir if the config puts it there) under /var/cache/jaxvideo.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/jaxvideo jaxvideo \
    && mkdir -p /var/lib/jaxvideo /var/cache/jaxvideo \
    && chown jaxvideo:jaxvideo /var/lib/jaxvideo /var/cache/jaxvideo
ENV JAXVIDEO_STATE_DIR=/var/lib/jaxvideo/state \
    JAXVIDEO_OUTPUT_DIR=/var/lib/jaxvideo/outputs \
    JAXVIDEO_CACHE_DIR=/var/cache/jaxvideo
VOLUME ["/var/lib/jaxvideo", "/var/cache/jaxvideo"]

USER jaxvideo
WORKDIR /home/jaxvideo
EXPOSE 8000
# 200 from /health, else unhealthy (503 while draining or after a multi-host slice lost a
# process). start-period covers loading models and the warm-up compiles.
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=8)"]
CMD ["jaxvideo-server", "-b", "0.0.0.0:8000"]
