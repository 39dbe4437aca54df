# One image for workers and producers. On a GPU host, PyPI's torch wheel brings CUDA.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HOME=/cache/huggingface
WORKDIR /app
COPY pyproject.toml README.md ./
COPY genq ./genq
RUN pip install "torch>=2.2,<3" && pip install ".[worker]"
# Runs as an unprivileged user; the model cache is a volume.
RUN useradd --create-home genq && mkdir -p /cache/huggingface && chown genq /cache/huggingface
USER genq
ENTRYPOINT ["genq"]
CMD ["worker"]
