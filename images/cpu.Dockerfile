# CPU image: smoke runs and CI-like jobs. Build from the repository root:
#   docker build -f images/cpu.Dockerfile -t trainingjob:cpu .
# Same pins as CI (constraints.txt); torch comes from the CPU wheel index.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface

WORKDIR /opt/trainingjob
COPY constraints.txt pyproject.toml README.md ./
COPY runner ./runner
COPY examples ./examples

RUN pip install --index-url https://download.pytorch.org/whl/cpu -c constraints.txt torch==2.13.0 \
 && pip install -c constraints.txt '.[train,samples]' \
 && useradd --create-home --uid 1000 trainer \
 && mkdir -p /cache /output \
 && chown trainer:trainer /cache /output

USER 1000
EXPOSE 9090
ENTRYPOINT ["trainingjob"]
CMD ["run", "examples/smoke.yaml", "--set", "spec.cacheDir=/cache/smoke", "--set", "spec.output.dir=/output/smoke"]
