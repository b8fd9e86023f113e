-- Runs once, on an empty data volume, as POSTGRES_USER in POSTGRES_DB (dagster).
-- Dagster's storage lives in the "dagster" database; the HLL backend
-- (HOMELOC_HLL_BACKEND=postgres) uses its own "homeloc" database with the extension.
CREATE EXTENSION IF NOT EXISTS hll;
CREATE DATABASE homeloc;
\connect homeloc
CREATE EXTENSION IF NOT EXISTS hll;
