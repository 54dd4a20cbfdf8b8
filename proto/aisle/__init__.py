"""Aisle public API: generated protobuf and gRPC stubs (package aisle.v1)."""
