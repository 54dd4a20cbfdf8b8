"""The HTTP/JSON gateway: the gRPC API over HTTP (FastAPI + uvicorn), and the playground at /ui."""
