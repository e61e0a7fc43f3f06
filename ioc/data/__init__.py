"""Data shipped with the daemon: the sample area registry, KPI targets, public holidays."""
