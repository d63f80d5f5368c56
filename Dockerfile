# One image for the verifier and the camera nodes (`edgespec verifier`, `edgespec camera`).
FROM python:3.11-slim
ARG TORCH_SPEC="torch==2.13.0"
ENV PYTHONUNBUFFERED=1 EDGESPEC_THREADS=1
WORKDIR /app
# For a CPU-only image pass the CPU wheel index with --build-arg PIP_EXTRA_INDEX_URL=...
ARG PIP_EXTRA_INDEX_URL=""
RUN pip install --no-cache-dir "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY broker broker
COPY camera_node camera_node
COPY edgespec edgespec
COPY schemas schemas
COPY security security
COPY speculative speculative
COPY verifier_node verifier_node
RUN pip install --no-cache-dir .
ENTRYPOINT ["edgespec"]
