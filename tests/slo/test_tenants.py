import hashlib
import json

import pytest

from servewise.errors import AuthenticationError, PermissionDeniedError
from servewise.slo import tenants as tenants_module
from servewise.slo.files import ConfigError
from servewise.slo.tenants import ApiKeyStore, Tenant, TenantLimits, load_api_keys, parse_api_keys

YAML = """
keys:
  sk-alice-1:
    tenant: alice
    slo_class: interactive
    requests_per_minute: 600
    tokens_per_minute: 200k
    concurrent_requests: 8
  sk-alice-2: {tenant: alice}
  "sha256:{bob_digest}": {tenant: bob, slo_class: batch, admin: true}
  sk-anon:
"""

ALICE = Tenant(name="alice", slo_class="interactive",
               limits=TenantLimits(requests_per_minute=600, tokens_per_minute=200_000, concurrent_requests=8))
BOB = Tenant(name="bob", slo_class="batch", is_admin=True)


def write_yaml(tmp_path, text: str):
    path = tmp_path / "keys.yaml"
    path.write_text(text.replace("{bob_digest}", hashlib.sha256(b"sk-bob").hexdigest()))
    return path


def test_load_yaml_file_with_hashed_key_and_shared_tenant(tmp_path):
    store = load_api_keys(write_yaml(tmp_path, YAML))
    assert len(store) == 4
    assert store.authenticate("sk-alice-1") == ALICE
    assert store.authenticate("sk-alice-2") == ALICE
    assert store.authenticate("sk-bob") == BOB
    assert store.authenticate("sk-anon") == Tenant(name="default")
    assert {t.name for t in store.tenants} == {"alice", "bob", "default"}


def test_load_toml_and_json(tmp_path):
    toml = tmp_path / "keys.toml"
    toml.write_text('[keys.sk-1]\ntenant = "t1"\nrequests_per_minute = 5\n')
    assert load_api_keys(toml).authenticate("sk-1").limits.requests_per_minute == 5
    js = tmp_path / "keys.json"
    js.write_text(json.dumps({"keys": {"sk-2": {"tenant": "t2", "admin": True}}}))
    assert load_api_keys(js).authenticate("sk-2").is_admin


@pytest.mark.parametrize("body, key, problem", [
    ("keys:\n  sk-1: {tenant: a, rpm: 5}\n", "keys[0].rpm", "unknown key"),
    ("keys:\n  sk-1: {tenant: a, requests_per_minute: 1.5}\n", "keys[0].requests_per_minute", "integer"),
    ("keys:\n  sk-1: {tenant: a, requests_per_minute: 0}\n", "tenant a", "≥ 1"),
    ("keys:\n  sk-1: {tenant: a, admin: sure}\n", "keys[0].admin", "true or false"),
    ("keys:\n  sk-1: {tenant: a, slo_class: x}\n  sk-2: {tenant: a, slo_class: y}\n", "keys[1].slo_class",
     "another key"),
    ("keys:\n  sk-1: {tenant: ''}\n", "keys[0].tenant", "non-empty"),
    ("keys: [sk-1]\n", "keys", "expected a table"),
    ("tenants: {}\n", "tenants", "unknown key"),
])
def test_bad_key_files(tmp_path, body, key, problem):
    path = write_yaml(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_api_keys(path)
    assert info.value.key == key and problem in info.value.problem and str(path) in str(info.value)
    assert "sk-1" not in str(info.value) and "sk-2" not in str(info.value)  # keys are secrets


def test_duplicate_keys_are_rejected():
    with pytest.raises(ConfigError, match="listed twice"):
        parse_api_keys(f"sk-1=a, sha256:{hashlib.sha256(b'sk-1').hexdigest()}=b")


def test_env_string():
    store = parse_api_keys("sk-1=alice;slo_class=interactive;rpm=60;tpm=100k;concurrency=4;admin, sk-2=bob,sk-3")
    alice = store.authenticate("sk-1")
    assert alice == Tenant(name="alice", slo_class="interactive", is_admin=True,
                           limits=TenantLimits(requests_per_minute=60, tokens_per_minute=100_000,
                                               concurrent_requests=4))
    assert store.authenticate("sk-2") == Tenant(name="bob")
    assert store.authenticate("sk-3").name == "default"
    with pytest.raises(ConfigError, match="SERVEWISE_API_KEYS: entry\\[0\\].requests_per_minute"):
        parse_api_keys("sk-1;rpm=lots")
    with pytest.raises(ConfigError, match="empty API key"):
        parse_api_keys("=alice")


def test_authentication_errors():
    store = ApiKeyStore.from_keys({"sk-1": Tenant("a")})
    for presented in (None, ""):
        with pytest.raises(AuthenticationError, match="missing API key"):
            store.authenticate(presented)
    with pytest.raises(AuthenticationError, match="invalid API key") as info:
        store.authenticate("sk-2")
    assert info.value.http_status == 401


def test_admin_and_class_checks():
    with pytest.raises(PermissionDeniedError):
        Tenant("a").require_admin()
    Tenant("root", is_admin=True).require_admin()
    store = ApiKeyStore.from_keys({"sk-1": Tenant("a", slo_class="gold")})
    with pytest.raises(ValueError, match="'gold'"):
        store.check_classes(["interactive", "batch"])
    store.check_classes(["gold"])


class CountingCompare:
    def __init__(self, real):
        self.real = real
        self.calls: list[tuple[int, int]] = []

    def __call__(self, a, b):
        self.calls.append((len(a), len(b)))
        return self.real(a, b)


@pytest.mark.parametrize("presented, tenant", [
    ("sk-0000", "t0"),  # the first key
    ("sk-0099", "t99"),  # the last key
    ("xk-0050", None),  # wrong in the first character
    ("sk-005x", None),  # wrong in the last character
    ("sk-00500000000000000000000000000000000000000000000000", None),  # a longer key
])
def test_lookup_compares_every_key_in_constant_time(monkeypatch, presented, tenant):
    store = ApiKeyStore.from_keys({f"sk-{i:04d}": Tenant(f"t{i}") for i in range(100)})
    counting = CountingCompare(tenants_module.hmac.compare_digest)
    monkeypatch.setattr(tenants_module.hmac, "compare_digest", counting)
    if tenant is None:
        with pytest.raises(AuthenticationError):
            store.authenticate(presented)
    else:
        assert store.authenticate(presented).name == tenant
    # every stored key is compared, whichever matched, and always 32-byte digest against 32-byte digest,
    # so the work does not depend on where (or whether) the presented key differs
    assert counting.calls == [(32, 32)] * 100


def test_no_keys_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no API keys"):
        parse_api_keys(" , ")
    with pytest.raises(ConfigError, match="no API keys"):
        load_api_keys(write_yaml(tmp_path, "keys: {}\n"))
