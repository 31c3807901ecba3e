"""The OpenDeploy server: HTTP adapters, services and wire codecs."""
