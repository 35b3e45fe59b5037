"""profile.json: round trip, and refusing a profile of another machine or model."""

from __future__ import annotations

import json

import pytest

from servewise.plan.machine import MachineInfo, model_fingerprint, this_machine
from servewise.plan.profile import Profile, ProfileError
from tests.plan.factories import make_profile


def test_a_profile_round_trips_through_its_file(tmp_path):
    profile = make_profile()
    profile.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json") == profile


def test_a_profile_of_this_machine_and_model_is_accepted():
    profile = make_profile()
    assert profile.check(profile.machine, "abc123") == []


def test_another_machine_is_refused_with_the_difference_and_the_way_out():
    profile = make_profile(cpu_model="Intel Xeon")
    here = MachineInfo("AMD EPYC", ("avx", "avx2", "avx512f"), 2, "2.13.0", "AVX512")
    with pytest.raises(ProfileError) as info:
        profile.check(here, "abc123")
    message = str(info.value)
    assert "another machine" in message and "'AMD EPYC' vs 'Intel Xeon'" in message
    assert "servewise profile" in message and "--allow-foreign-profile" in message
    assert profile.check(here, "abc123", allow_foreign=True)  # allowed: the differences are returned


def test_another_model_is_refused():
    profile = make_profile()
    with pytest.raises(ProfileError, match="another model: model: this plan's model is not the profiled 'tiny'"):
        profile.check(profile.machine, "other")


@pytest.mark.parametrize("content, message", [
    ("not json", "is not JSON"),
    ("[1, 2]", "is not a servewise profile"),
    ('{"tool": "servewise-bench", "schema_version": 1}', "not a servewise profile this build reads"),
    ('{"tool": "servewise-profile", "schema_version": 1}', "is not a valid servewise profile"),
])
def test_a_bad_file_gets_a_clear_error(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ProfileError, match=message):
        Profile.load(path)
    with pytest.raises(ProfileError, match="cannot read profile"):
        Profile.load(tmp_path / "missing.json")


def test_a_newer_schema_is_refused(tmp_path):
    data = make_profile().to_dict()
    data["schema_version"] = 99
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="schema_version 99"):
        Profile.load(tmp_path / "p.json")


def test_this_machine_and_model_fingerprints(tmp_path):
    machine = this_machine()
    assert machine.cpu_model and machine.num_cpus >= 1 and machine.torch_version
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + bytes(3 << 20))
    before = model_fingerprint(str(model))
    assert model_fingerprint(str(model)) == before
    model.write_bytes(b"GGUF" + bytes(3 << 20) + b"x")
    assert model_fingerprint(str(model)) != before
