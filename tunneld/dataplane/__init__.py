"""The ESP data plane, pure (same rules as :mod:`ike`: no I/O, no clock, no RNG).

Pipeline, outbound: inner IP packet -> traffic-selector lookup (SADatabase)
-> OutboundSA.encrypt (seq++, IV = seq, AES-GCM, AAD = SPI||seq) -> ESP bytes
sent in UDP to the peer's port 4500.
Inbound: UDP payload -> demux (non-ESP marker: IKE; 0xFF: keepalive; else ESP)
-> SPI lookup -> replay check -> AES-GCM open -> replay update -> inner packet.

Modules: ``drops`` (DropReason, EspDrop: the only exception that leaves the
data plane on purpose), ``esp`` (stateless codec, RFC 4303/4106), ``replay``
(RFC 6479 window, ESN inference), ``udpencap`` (RFC 3948 demux), ``sa``
(InboundSA/OutboundSA: key, counters), ``sadb`` (SADatabase: tunnels and
lookups; its docstring lists what may change state and where).
"""
