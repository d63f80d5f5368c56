# One image for the verifier, the camera nodes, provisioning and the dashboard (`edgespec ...`).
# torch comes from the CPU wheel index by default (PyPI's torch for Linux x86_64 is the
# multi-GB CUDA build). For a GPU verifier build with `--build-arg TORCH_INDEX=` (empty: the
# default index, CUDA) as compose.yaml's `gpu` profile does.
FROM python:3.11-slim
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cpu"
ENV PYTHONUNBUFFERED=1 EDGESPEC_THREADS=1
WORKDIR /app
RUN pip install --no-cache-dir ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY broker broker
COPY camera_node camera_node
COPY edgespec edgespec
COPY schemas schemas
COPY security security
COPY speculative speculative
COPY transport transport
COPY verifier_node verifier_node
RUN pip install --no-cache-dir .
# No keys or credentials in the image: compose.yaml's `provision` service writes them into
# the `fleet` volume (EDGESPEC_HOME) when the stack first starts.
ENTRYPOINT ["edgespec"]
