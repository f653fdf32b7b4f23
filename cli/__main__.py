"""`python -m neuronindex_cli` runs the command line."""
from neuronindex_cli.main import main

main()
