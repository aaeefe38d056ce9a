"""The shared test-helper layer: what more than one test module needs lives here.

- ``packets``: IPv4/IPv6/UDP/ICMP headers and checksums, the pcap reader.
- ``daemon_memory``: two daemons in one process over in-memory devices (the
  ``pair`` fixture, ``Site``/``Pair``, ``start_site``, ``children``...).
- ``configfiles``: configuration files for the config and CLI tests.
- ``sitelab``: the five-namespace lab (netns-scripts/lab.sh) for tests.
- ``lab_sites``: two real ``tunneld run`` daemons in the lab (``Sites``).
- ``swan``, ``certs``, ``pairing``: strongSwan as the other gateway, the lab's
  certificates, and the tunneld-vs-strongSwan pairing every interop test uses.
- ``fixtures``: the pytest fixtures built on these (``lab``, ``static_pair``,
  ``inside_netns``, ``make_sites``, ``strongswan``, ``tunneld_gateway``,
  ``swan_pair``), registered for the whole suite by tests/conftest.py.

No test module imports another test module (tests/unit/test_suite_layout.py).
"""
