"""Built-in plugin ``s3``: the vault's blobs on S3-compatible object storage.

Registers the blob scheme ``s3://bucket/prefix`` (``vault.blob_url``) and the
``[s3]`` settings table (endpoint, region, retries, timeouts). Credentials come
only from boto3's standard chain (environment, shared files, instance roles);
qlora-hub stores none. boto3 is imported when a store is opened, never at
plugin load.
"""

from hub import hookimpl

SETTINGS = {
    "endpoint_url": ("", str),
    "region": ("", str),
    "max_attempts": (5, int),
    "connect_timeout_s": (5.0, float),
    "read_timeout_s": (60.0, float),
}
"""The ``[s3]`` table: key -> (default, type); environment ``QLORA_HUB_S3_<KEY>``."""


@hookimpl
def register_settings(register):
    """Declare the ``[s3]`` settings table."""
    register("s3", SETTINGS)


@hookimpl
def register_blob_stores(register):
    """Register ``s3://`` (:class:`plugins.s3.store.S3BlobStore`)."""

    def open_s3(url, settings):
        from plugins.s3.store import S3BlobStore

        return S3BlobStore(url, settings)

    register("s3", open_s3)


@hookimpl
def register_commands(cli):
    """Add ``bench s3``."""
    from plugins.s3 import bench

    bench.add_to(cli)
