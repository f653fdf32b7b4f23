"""Queries over an index: guarded SQL, the property search language, export."""
