"""The shared base of the contract suites (one module per protocol beside this one).

Each suite asks for one fixture that returns the object under test
(``quantizer``, ``adapter_method``, ``optimizer_factory``,
``storage_backend``, ``aggregator``). Every suite starts with the checks the
``register`` callback makes, then adds the behaviour each protocol promises.
"""

from __future__ import annotations

from typing import Any

import pytest

from hub.registry import Registry, protocol_members


class ProtocolContract:
    """Checks every registered object must pass; subclasses set the three class attributes."""

    protocol: type = object
    kind: str = ""
    fixture_name: str = ""

    @pytest.fixture
    def subject(self, request: pytest.FixtureRequest) -> Any:
        return request.getfixturevalue(self.fixture_name)

    def test_satisfies_protocol(self, subject: Any) -> None:
        missing = [m for m in protocol_members(self.protocol) if not hasattr(subject, m)]
        assert missing == [], f"missing members of {self.protocol.__name__}: {missing}"

    def test_name_is_identifier(self, subject: Any) -> None:
        assert isinstance(subject.name, str) and subject.name.isidentifier()

    def test_has_description(self, subject: Any) -> None:
        assert isinstance(subject.description, str) and subject.description.strip()

    def test_registers_cleanly(self, subject: Any) -> None:
        classes = self.kind == "storage"  # backends are registered as classes
        reg = Registry(self.kind, self.protocol, classes=classes)
        obj = type(subject) if classes else subject
        reg.register(obj, plugin="contract-test")
        assert reg[subject.name] is obj
