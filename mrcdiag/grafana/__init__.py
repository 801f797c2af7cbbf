"""Grafana: dashboards generated from code, and pushing them through the HTTP API."""
