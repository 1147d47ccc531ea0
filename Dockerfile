# GPU image for the processor: Python, the exact torch CI tests (its wheel brings the CUDA runtime
# libraries), the project from constraints.txt, a non-root user, the model cache on a volume.
# Build: docker build -t qwen-edit-processor .    Run: see docker-compose.yml and docs/deployment.md
# The host needs an NVIDIA driver new enough for the CUDA 13 build of torch 2.14 (580 or later).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/models \
    MODEL_CACHE_DIR=/models \
    HOST=0.0.0.0 \
    PORT=8000

RUN useradd --create-home --uid 10001 processor \
    && mkdir -p /models /app \
    && chown -R processor:processor /models /app

WORKDIR /app
# The extras to install. The default is every integration an image may be asked for: the diffusers
# engine, ComfyUI, RunPod, MCP, and quantization (bitsandbytes, torchao) so MEMORY_MODE=quantized works
# on 24 GB cards. `--build-arg EXTRAS=comfyui,mcp` builds a ComfyUI-only image without torch.
ARG EXTRAS=diffusers,comfyui,runpod,mcp,quantization
# Torch first, pinned exactly as in constraints.txt (tests/test_deployment_files.py checks the pair),
# when an extra that needs it is asked for.
COPY constraints.txt ./
RUN case ",${EXTRAS}," in *,diffusers,*|*,quantization,*) \
        pip install -c constraints.txt torch==2.14.1 torchvision==0.29.1 ;; esac
COPY pyproject.toml README.md ./
COPY processor ./processor
COPY supabase ./supabase
RUN pip install -c constraints.txt ".[${EXTRAS}]"

USER processor
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz').status == 200 else 1)"
CMD ["edit-processor", "serve"]
