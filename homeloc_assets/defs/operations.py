"""Sensors, schedules and jobs that run homeloc without anyone clicking."""

SENSORS: list = []
SCHEDULES: list = []
JOBS: list = []
