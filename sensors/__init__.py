"""Sensors: ``batch_sensor`` (queue → one run per batch) and ``batch_failure_sensor``."""
