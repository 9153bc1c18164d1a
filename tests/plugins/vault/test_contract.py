"""The vault passes the StorageBackend contract suite."""

import pytest

from hub.testing import StorageBackendContract


class TestVaultContract(StorageBackendContract):
    @pytest.fixture
    def storage_backend(self, vault):
        return vault
