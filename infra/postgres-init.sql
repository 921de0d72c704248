-- Run once by the postgres container: the Prefect server's database, with the extension its migrations need.
CREATE DATABASE prefect OWNER labpipe;
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
