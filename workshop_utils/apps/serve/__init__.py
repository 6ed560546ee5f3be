"""The web API: app (FastAPI endpoints), uploads (limits), batcher (micro-batching), server (uvicorn), page.html."""
