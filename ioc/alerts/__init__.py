"""Alerts: what the rule engine's state changes become for operators (docs/http-api.md, docs/rules.md).
"""
