"""The Omni console: HTML pages over the five services' gRPC APIs; it owns no data."""
