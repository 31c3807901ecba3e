"""The ``opendeploy`` command."""
