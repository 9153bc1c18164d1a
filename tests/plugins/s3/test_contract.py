"""The vault passes the StorageBackend contract suite with its blobs on S3."""

import pytest

from hub.testing import StorageBackendContract


class TestVaultOnS3Contract(StorageBackendContract):
    @pytest.fixture
    def storage_backend(self, s3_vault):
        assert type(s3_vault.blobs).__name__ == "S3BlobStore"
        return s3_vault
