"""strongSwan interop tests: the peer (swan.py), the lab (sitelab.py), certificates."""
