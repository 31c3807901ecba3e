"""Use cases of the public API, free of any web framework.

Each operation is a function ``(ServiceContext, params) -> result`` over the botocore-shaped
request and response mappings; ``registry.OPERATIONS`` maps operation names to them.
"""
