"""Probabilistic matching: recognising a person from name, address and date of birth when no identifier
is shared.

A map of the package, from the wire inwards:

- ``wiring``: settings (OMNI_IDENTITY_MATCHING_*) and the servicer registered in the identity server;
- ``api``: the MatchingService servicer (validation, transactions), ``messages``: protobuf ⇄ domain;
- ``linking``: the use cases in a transaction: decide, file and keep the lineage, settle reviews, train and
  put a model in use;
- ``graph``: filing decisions in the identity graph (persons created, identifiers attached by its rules),
  ``graph_repository``: the graph's own storage, bound to the matcher's transaction;
- ``repository``: all SQL of the matcher's tables, ``models``: the tables;
- pure domain: ``records`` and ``normalise`` (the compared fields), ``phonetic`` and ``blocking`` (which
  records are compared), ``comparison`` (agreement levels), ``model`` (Fellegi-Sunter weights and
  probabilities), ``em`` (learning m, u and the prior), ``training``, ``matcher`` (the decisions);
- ``febrl`` and ``evaluate``: the FEBRL4 benchmark against the recordlinkage toolkit.
"""
