"""The profile service: one profile of everything a person did, on every channel.

Where things happen:
    api.py                  the gRPC servicer (checks, protobuf ⇄ domain, transactions)
    validation.py           what a valid event (and trait set) is, as field violations
    request_validation.py   the checks of the other requests
    ingestion.py            the one entry point of events: checked events in, one result per event out
    tracking.py             events resolved through identity, stored once per (source, id), applied, announced
    cart.py                 how cart events change a cart, in the order they happened
    computed.py             computed traits: kinds, per-person state, values (pure)
    computed_traits.py      the definitions in force, creating them, backfills
    traits.py               setting traits; precedence.py which source wins; trait_schema.py known types
    consents.py             consent per channel and purpose, double opt-in
    contact_verdicts.py     may the person be contacted per channel and purpose: decided, announced, republished
    profiles.py             the 360 view, the timeline, the histories
    merge.py                identity merges and unmerges move profiles between persons (omni_kit.lineage hooks)
    erasure.py              identity's erasures delete everything of a person
    persons.py              per-person write locks, and merged ids leading to their survivor
    events.py               what profile publishes; consumers.py what it consumes (types and handlers)
    identity_client.py      calls to the identity service
    http/                   the Segment-compatible HTTP endpoint and the event stream's intake
    repository/             all SQL; models.py the tables; migrations/ their history
    main.py                 settings and start()
"""
