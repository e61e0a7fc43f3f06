"""Data shipped with the daemon: the national area registry, KPI targets, public holidays."""
