"""The local backend passes the StorageBackend contract suite."""

import pytest

from hub.testing import StorageBackendContract
from plugins.local.backend import LocalStore


class TestLocalContract(StorageBackendContract):
    @pytest.fixture
    def storage_backend(self, tmp_path):
        return LocalStore(tmp_path / "storage" / "local", team="alpha")
