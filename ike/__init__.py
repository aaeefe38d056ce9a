"""The IKEv2 profile of tunneld, sans-I/O.

Rules for every module in this package (and for ``tunneld.dataplane``):

1. No I/O: never import trio, socket, pytun or anything that touches a file
   descriptor; never read a clock; never call ``os.urandom``/``secrets``.
   Time comes in as ``now`` (float seconds, monotonic), randomness through an
   injected :class:`ike.entropy.Entropy` (deterministic in tests).
2. Every timer (retransmit, rekey with jitter, DPD, half-open expiry, delete
   delay) is a deadline the session reports via ``next_deadline()``; the shell
   sleeps until it and calls ``handle_timer(now)``.
3. Errors come in two families, converted at one boundary (the session):
   :class:`ike.errors.PeerError` (the peer sent something wrong; carries the
   notify type to answer with, if any) and :class:`ike.errors.LocalError`
   (we were misused or misconfigured). Any other exception is a bug.
4. Secrets (SK_*, KEYMAT, PSKs, DH private values, private keys) never reach a
   repr, a log line or an exception message.
"""
