# The MLflow tracking server of compose.yaml: MLflow with its auth extra (the basic-auth app) and
# the PostgreSQL driver (the backend store and the basic-auth user store both live in PostgreSQL).
#
#   docker compose -f infra/mlflow/compose.yaml build
#
# MLFLOW_VERSION: within the project's pin (mlflow>=3.0,<4, pyproject.toml extra "driver"), and no
# older than the clients that log to it.
FROM python:3.11-slim-bookworm

ARG MLFLOW_VERSION=3.18.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install "mlflow[auth]==${MLFLOW_VERSION}" "psycopg2-binary>=2.9,<3" \
    && mkdir -p /mlartifacts

EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
