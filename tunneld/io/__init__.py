"""The only code in tunneld that touches file descriptors: TUN and UDP.

Each device has an in-memory twin with the same interface (``MemoryTun``,
``MemoryUdp`` on a ``MemoryNetwork``), shipped here for tests and demos.
"""

from tunneld.io.tun import MemoryTun, TunDevice, TunStats
from tunneld.io.udp import Address, MemoryNetwork, MemoryUdp, UdpSocket, UdpStats

__all__ = [
    "Address",
    "MemoryNetwork",
    "MemoryTun",
    "MemoryUdp",
    "TunDevice",
    "TunStats",
    "UdpSocket",
    "UdpStats",
]
