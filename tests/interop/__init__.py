"""strongSwan interop tests: the peer wrapper (swan.py), the lab (swanlab.py), a test PKI."""
