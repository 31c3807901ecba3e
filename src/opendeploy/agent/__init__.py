"""The deployment agent: polls the server, installs bundles and runs lifecycle hooks."""
