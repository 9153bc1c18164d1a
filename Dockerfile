# qlora-hub server image. CPU torch by default; for CUDA:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t qlora-hub:cuda .
# Run: docker run -p 8000:8000 -v qlora-home:/home/qlora/.qlora-hub qlora-hub --base /home/qlora/.qlora-hub/base-nf4

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url ${TORCH_INDEX} torch==${TORCH_VERSION}
WORKDIR /src
COPY pyproject.toml README.md ./
COPY hub ./hub
COPY plugins ./plugins
COPY server ./server
RUN pip install .

FROM python:${PYTHON_VERSION}-slim
RUN useradd --create-home --uid 10001 qlora
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    QLORA_HUB_HOME=/home/qlora/.qlora-hub \
    QLORA_HUB_SERVE_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
USER qlora
RUN mkdir -p /home/qlora/.qlora-hub
VOLUME ["/home/qlora/.qlora-hub"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["qlora-hub", "serve"]
