"""Dagster wiring: assets, checks, partitions, sensors, schedules, resources, IO managers."""
