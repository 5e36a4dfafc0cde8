from tests.support.hub_agents import hub_server  # noqa: F401 - the fixture
