"""Kafka (Tansu locally, Azure Event Hubs' Kafka endpoint in production): the ResultStream port's adapter
(``producer``), the readers (``readers``), topic admin (``admin``) and client settings per cluster (``connection``)."""
