"""The ESP data plane, pure (same rules as :mod:`ike`: no I/O, no clock, no RNG).

Pipeline, outbound: inner IP packet -> traffic-selector lookup (SADatabase)
-> OutboundSA.encrypt (seq++, IV = seq, AES-GCM, AAD = SPI||seq) -> ESP bytes
sent in UDP to the peer's port 4500.
Inbound: UDP payload -> demux (non-ESP marker: IKE; 0xFF: keepalive; else ESP)
-> SPI lookup -> replay check -> AES-GCM open -> replay update -> inner packet.
"""
