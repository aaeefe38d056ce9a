"""tunneld: a userspace IPsec site-to-site VPN daemon (IKEv2 profile, ESP-in-UDP over TUN)."""

__version__ = "0.1.0"
