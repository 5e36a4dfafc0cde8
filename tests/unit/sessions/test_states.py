"""The state machine is closed, and the tables that drive it agree with it."""

from streamspace.sessions import states
from streamspace.sessions.scheduler import choose_agent, room_for

TRANSITIONAL = {states.PENDING, states.SCHEDULED, states.STARTING, states.HIBERNATING,
                states.WAKING, states.TERMINATING}


def test_every_state_has_its_moves_and_every_transitional_one_a_deadline():
    assert set(states.TRANSITIONS) == set(states.ALL_STATES)
    assert set(states.TRANSITIONAL_TIMEOUTS) == TRANSITIONAL
    for state in TRANSITIONAL:  # a way forward, and out by failing
        assert states.FAILED in states.TRANSITIONS[state] or state == states.PENDING
        assert states.TRANSITIONS[state] - {states.FAILED}
    assert states.TRANSITIONS[states.TERMINATED] == frozenset()


def test_command_outcomes_are_moves_the_machine_allows():
    for kind, outcome in states.OUTCOMES.items():
        for before in outcome.expect:
            for target in (outcome.success, outcome.failure, outcome.timeout):
                if outcome.keep_unreachable and before == states.UNREACHABLE \
                        and target == outcome.timeout:
                    continue  # stays put: the agent's report decides
                via_starting = kind == "start_session" and states.can_move(
                    before, states.STARTING) and states.can_move(states.STARTING, target)
                assert states.can_move(before, target) or via_starting, (kind, before, target)


def test_user_requests():
    assert states.requested_transition(states.RUNNING, "hibernated") == states.HIBERNATING
    assert states.requested_transition(states.HIBERNATED, "running") == states.WAKING
    assert states.requested_transition(states.STOPPED, "running") == states.PENDING
    assert states.requested_transition(states.FAILED, "running") == states.PENDING
    for current, requested in ((states.PENDING, "hibernated"), (states.TERMINATED, "running")):
        try:
            states.requested_transition(current, requested)
        except states.InvalidTransition as e:
            assert current in str(e)
        else:
            raise AssertionError((current, requested))


AGENT = {"agent_id": "a", "sessions": 1, "cpu": 1.0, "memory_mb": 1024}


def test_room_names_the_limit_and_survives_a_capacity_it_cannot_read():
    tpl = {"cpu": 1, "memory_mb": 1024}
    assert room_for({**AGENT, "capacity": {}}, tpl) is None
    assert "runs 1/1 sessions" in room_for({**AGENT, "capacity": {"max_sessions": 1}}, tpl)
    assert "no CPU left" in room_for({**AGENT, "capacity": {"max_cpu": 1.5}}, tpl)
    assert "no memory left" in room_for({**AGENT, "capacity": {"max_memory_gb": 1}}, tpl)
    for bad in ("lots", {"max_sessions": "x"}, [1], {"max_cpu": float("nan")}):
        assert "invalid capacity" in room_for({**AGENT, "capacity": bad}, tpl)


def test_choose_agent_skips_a_bad_one_and_takes_the_least_loaded():
    good = [{**AGENT, "agent_id": "b", "capacity": {}, "sessions": 3},
            {**AGENT, "agent_id": "c", "capacity": {}, "sessions": 0}]
    bad = {**AGENT, "agent_id": "a", "capacity": "lots", "sessions": 0}
    agent, why = choose_agent([bad] + good, {"cpu": 1})
    assert agent["agent_id"] == "c" and why == ""
    agent, why = choose_agent([bad], {"cpu": 1})
    assert agent is None and "invalid capacity" in why
    assert choose_agent([], {})[1] == "no online agent matches the requested platform/region"
