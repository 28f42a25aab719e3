"""Multi-step journeys: a versioned graph of steps (JourneySpec), its lifecycle, and the engine that runs each
person through it on omni_kit.scheduler's durable jobs.

- spec.py: the graph's rules beyond the proto (ids, links, percentages), its stored form, what it references.
- store.py: the SQL (journeys' versions, runs, the steps they took, profile read models).
- lifecycle.py: create, update the draft, publish (references checked), pause, resume, archive.
- engine.py: entries (segment, event, API trigger, existing members), entry rules, each step as a job.
- steps.py: the pure rules of steps (waits' due times, random split buckets, filters).
- api.py: the RPCs, as a mixin of the service's servicer.
"""
