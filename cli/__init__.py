"""The click command-line app (installed as neuronindex_cli): parses, calls neuronindex, formats."""
