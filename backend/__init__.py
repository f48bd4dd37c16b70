"""clipmem backend: the database schema and migrations, ingestion of finished runs, and the HTTP API.

Nothing here imports torch: the API serves what `clipmem ingest` stored.
"""
