"""The chaos suite (issue 9, docs/operations.md), in the manner of Jepsen: a generator sends known events over
MQTT QoS 1 and HTTP and records every acknowledgement, a nemesis injects faults on a schedule, and a
checker proves what held. `test_chaos_short.py` is the short profile (pytest); `python -m tests.chaos
--minutes 30 [--seed N]` the long one. See `runner.py` for the whole picture."""
