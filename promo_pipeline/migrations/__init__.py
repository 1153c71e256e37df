"""Alembic migrations of the pipeline's own schema `promo` (see `promo_pipeline.db`).

A new revision is one new file in `versions/`: copy `0001_baseline.py`, give it a new
`revision` id and set `down_revision` to the id of the newest file before it. `promo db
upgrade` (and `init_db`) apply it; runs refuse to start until the database is at the head.
"""
