"""The pytest plugin shipped to plugin authors: fixtures and contract suites."""

from hub import hookimpl


def test_contract_suite_passes_for_a_conforming_third_party_object(pytester):
    pytester.makepyfile(
        """
        import pytest
        from hub.testing import OptimizerFactoryContract

        class Sgd:
            name = "sgd2"
            description = "plain sgd"
            def build(self, params, *, lr, weight_decay=0.0):
                import torch
                return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)

        class TestSgd(OptimizerFactoryContract):
            @pytest.fixture
            def optimizer_factory(self):
                return Sgd()
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=len(_contract_tests("OptimizerFactoryContract")))


def test_contract_suite_fails_for_a_non_conforming_object(pytester):
    pytester.makepyfile(
        """
        import pytest
        from hub.testing import OptimizerFactoryContract

        class Bad:
            name = "not valid"
            description = ""

        class TestBad(OptimizerFactoryContract):
            @pytest.fixture
            def optimizer_factory(self):
                return Bad()
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] >= 3
    result.stdout.fnmatch_lines(["*test_satisfies_protocol*", "*test_name_is_identifier*"])


def test_hub_factory_unregisters_plugins_after_the_test(pytester):
    pytester.makepyfile(
        """
        from hub import hookimpl

        class P:
            @hookimpl
            def training_event(self, event):
                pass

        KEEP = {}

        def test_one(hub_factory):
            hub = hub_factory(("p", P()))
            KEEP["hub"] = hub
            assert hub.pm.get_plugin("p") is not None

        def test_two():
            assert KEEP["hub"].pm.get_plugin("p") is None
        """
    )
    pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_qlora_home_fixture_exports_the_home(qlora_home):
    import os

    assert os.environ["QLORA_HUB_HOME"] == str(qlora_home)
    assert list(qlora_home.iterdir()) == []


def test_hub_factory_builds_only_the_given_plugins(hub_factory):
    class P:
        @hookimpl
        def training_event(self, event):
            pass

    hub = hub_factory(("only", P()))
    assert list(hub.infos) == ["only"]


def _contract_tests(cls_name):
    import hub.testing as kit

    cls = getattr(kit, cls_name)
    return [n for n in dir(cls) if n.startswith("test_")]
