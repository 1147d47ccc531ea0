# GPU image for the processor: CUDA PyTorch base, the project, a non-root user, the model cache on a volume.
# Build: docker build -t qwen-edit-processor .    Run: see docker-compose.yml
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/models \
    MODEL_CACHE_DIR=/models \
    HOST=0.0.0.0 \
    PORT=8000

RUN useradd --create-home --uid 10001 processor \
    && mkdir -p /models /app \
    && chown -R processor:processor /models /app

WORKDIR /app
COPY pyproject.toml README.md ./
COPY processor ./processor
COPY supabase ./supabase
# The base image's torch (and torchvision) satisfy the project's `torch>=2.6`: pip keeps them.
# The quantization extra (bitsandbytes, torchao) makes MEMORY_MODE=quantized work on 24 GB cards.
RUN pip install '.[quantization]'

USER processor
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz').status == 200 else 1)"
CMD ["edit-processor", "serve"]
