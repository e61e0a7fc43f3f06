"""The shipped scenarios (YAML), listed by `ioc sim list`."""
