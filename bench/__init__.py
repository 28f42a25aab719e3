"""Omni's benchmark harness: ``python -m bench`` (``make bench``) measures the design targets.

Every figure is reported next to a baseline measured in the same run on the same machine (a bare grpc.aio
echo server, raw COPY into PostgreSQL, raw database round-trips), because the machines are shared and
noisy: the ratio travels better than the absolute number. See bench/README.md.
"""
