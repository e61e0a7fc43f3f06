"""The shipped area registries (CSV)."""
