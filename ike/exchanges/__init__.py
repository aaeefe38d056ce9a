"""One module per exchange, each with initiator and responder halves (see :mod:`.base`).

- :mod:`.ike_init`      IKE_SA_INIT: proposals, DH, nonces, NAT detection
- :mod:`.ike_auth`      IKE_AUTH: identities, certificates, AUTH
- :mod:`.authn`         the ID/CERT/AUTH building blocks ike_auth uses
- :mod:`.child_create`  SA/TSi/TSr and KEYMAT of a new Child SA
- :mod:`.informational` deletes, error reports, liveness
- :mod:`.selectors`     traffic selector narrowing (§2.9)
- :mod:`.context`       the negotiated state all of them share
"""
