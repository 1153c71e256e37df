-- Runs once, when the Postgres volume is first initialised: the Dagster instance keeps its
-- runs, event log and schedules in a database of its own (DAGSTER_PG_DB=dagster).
CREATE DATABASE dagster;
