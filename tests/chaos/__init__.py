"""The chaos suite (issues 9 and 11, docs/operations.md), in the manner of Jepsen: a generator sends known
events over MQTT QoS 1 and HTTP and records every acknowledgement, a nemesis injects faults on a schedule,
and a checker proves what held. The world is one daemon behind fault proxies (`world.py`) or two nodes on
PostgreSQL (`cluster.py`). `test_chaos_short.py` has the short profiles (pytest); `python -m tests.chaos
--minutes 30 [--seed N] [--two-nodes]` the long ones. See `runner.py` for the whole picture."""
