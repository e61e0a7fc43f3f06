"""Simulators of a province's subsystems (simulators/README.md): scenarios played as contract events.

A scenario (`simulators/scenarios/*.yaml`, see `ioc.simulators.scenario`) names a province, whose units come
from an areas file or the daemon's public API (`ioc.simulators.areas`), the subsystems that report from it
(`ioc.simulators.subsystems`), timed incidents and the alerts it expects. `ioc.simulators.play` turns it into a deterministic stream of events, `ioc.simulators.publish`
sends them (MQTT, HTTP or stdout), `ioc.simulators.verify` checks a daemon's alerts, and `ioc.simulators.cli`
is `ioc sim`. It is also a vendor's worked example of publishing to the daemon: it imports nothing of the
daemon (only `ioc.simulators.*` and third-party libraries) and knows it only by its public contract.
"""
