"""``python -m opendeploy`` runs the ``opendeploy`` command."""

from opendeploy.cli.main import main

main()
