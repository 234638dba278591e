"""Scenario files: schema, loading (extends + dotted overrides) and up-front validation."""
