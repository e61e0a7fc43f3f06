"""ioc: the event-aggregation daemon of a provincial Intelligent Operations Center."""
__version__ = "0.1.0"
