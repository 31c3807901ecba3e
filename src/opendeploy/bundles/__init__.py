"""Revision bundles: making them, storing them and fetching them.

``archive``
    ``make_bundle`` turns a directory with an ``appspec.yml`` at its root into a deterministic
    ``tar.gz``: the same content always gives the same bytes, hence the same sha256.
``store``
    The server's content-addressed bundle store (``BundleStore``): a local directory by default
    (``LocalBundleStore``), an S3 bucket when configured (``S3BundleStore``), chosen with
    ``open_store``. Pushed bundles appear in the public API as S3 revision locations
    (``revision_location`` / ``sha256_from_location``).
``fetch``
    What the agent uses to bring a revision onto the host: ``fetch_s3`` (GetObject with an
    optional version and ETag check), ``fetch_git`` (one exact commit, no ``.git``) and
    ``fetch_http`` (resumable download checked against a sha256). It imports nothing from the
    server or the database layer.

Every error raised on purpose is a ``BundleError`` (an ``OpenDeployError``).
"""
