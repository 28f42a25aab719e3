"""Examples of Omni in use, loaded through the public gRPC APIs."""
