# clipmem: scoring pipeline, backend and dashboard in one image (see docker-compose.yml).
#
#   docker build -t clipmem .                                  # CPU torch (default, smaller)
#   docker build -t clipmem:gpu --build-arg TORCH_INDEX_URL= . # PyPI's torch, which ships CUDA
FROM python:3.11-slim

# Extra package index for torch; the default is the CPU-only wheels. Empty: PyPI's (CUDA) wheels.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so editing the source does not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir clipmem \
    && touch clipmem/__init__.py \
    && pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} . \
    && rm -rf clipmem build ./*.egg-info

# clipmem/ holds the composition root and symbolic links to the three layers' folders
COPY scoring ./scoring
COPY backend ./backend
COPY frontend ./frontend
COPY clipmem ./clipmem
RUN pip install --no-deps --force-reinstall . \
    && rm -rf build ./*.egg-info \
    && clipmem --help > /dev/null

# Unprivileged user. /runs (run directories) belongs to it, so a named volume mounted there starts out
# writable; its home is the working folder (the default SQLite database would be created there).
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin clipmem \
    && mkdir -p /runs \
    && chown clipmem:clipmem /runs
USER clipmem
WORKDIR /home/clipmem

EXPOSE 8000 8501

CMD ["clipmem", "serve", "--host", "0.0.0.0"]
