"""``python -m kargo_bitbucket`` runs the command line."""

from kargo_bitbucket.cli import main

main()
