"""Spec loading: safe YAML with locations, expressions, pydantic structure models."""
