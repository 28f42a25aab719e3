"""The profile service: one profile of everything a person did, on every channel.

Where things happen:
    api.py              the gRPC servicer (checks, protobuf ⇄ domain, transactions)
    validation.py       what a valid request is, as field violations
    tracking.py         events resolved through identity, stored once by id, applied to the cart, announced
    cart.py             how cart events change a cart
    profiles.py         the 360 view, the timeline, traits and consent
    merge.py            identity merges: the merged persons' profiles move to the survivor
    persons.py          per-person write locks, and merged ids leading to their survivor
    events.py           the events published and consumed, and the consumers' handlers
    identity_client.py  calls to the identity service
    repository.py       all SQL; models.py the tables; migrations/ their history
    main.py             settings and start()
"""
