"""Domain logic in plain Python: no FastAPI or Starlette imports here."""
