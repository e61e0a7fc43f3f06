"""Alerts: what the rule engine's state changes become for operators (CONTRACT §3, §5)."""
