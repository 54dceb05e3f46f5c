-- Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d): the
-- tracking data goes to the database POSTGRES_DB (mlflow), the basic-auth users to their own.
CREATE DATABASE mlflow_auth OWNER mlflow;
