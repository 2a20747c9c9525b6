"""Pydantic models: the shapes that cross the service's boundaries."""
