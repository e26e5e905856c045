"""Pure logic, no I/O: URL parsing, names, retry strategies, the error tree, client options."""

from __future__ import annotations

import pytest

import tenure
from tenure import errors
from tenure._names import check_name, new_owner_id
from tenure._retry import ExponentialRetry, FixedRetry, NoRetry
from tenure._url import parse_url


def test_url_with_hosts_credentials_and_query() -> None:
    url = parse_url("etcd://alice:s3cret@h1:2379,[::1]:2380,h3/ns?ttl=10&namespace=app1")
    assert url.scheme == "etcd"
    assert url.hosts == (("h1", 2379), ("::1", 2380), ("h3", None))
    assert url.username == "alice"
    assert url.password == "s3cret"
    assert url.path == "/ns"
    assert url.query == {"ttl": "10", "namespace": "app1"}
    assert "s3cret" not in url.redacted()
    assert "s3cret" not in repr(url)
    assert url.redacted() == "etcd://alice:***@h1:2379,[::1]:2380,h3/ns"


def test_url_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TENURE_URL", raising=False)
    assert parse_url(None).scheme == "file"
    monkeypatch.setenv("TENURE_URL", "redis://127.0.0.1:6379")
    assert parse_url(None).scheme == "redis"
    assert parse_url("file:///tmp/x").path == "/tmp/x"
    assert parse_url("REDIS://h").scheme == "redis"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "not a URL"),
        ("redis://h:99999", "out of range"),
        ("redis://h:port", "bad port"),
        ("etcd://::1:2379", "brackets"),
        ("etcd://[::1:2379", "bad etcd:// URL|unclosed"),
        ("etcd://h1,,h2", "empty host"),
        ("bad scheme!://h", "bad URL scheme"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(errors.ConfigurationError, match=message):
        parse_url(url)


def test_bad_url_message_hides_password() -> None:
    with pytest.raises(errors.ConfigurationError) as info:
        parse_url("user:hunter2@nowhere")
    assert "hunter2" not in str(info.value)


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(errors.ConfigurationError, match=r"unknown URL scheme 'gopher://'.*file://"):
        tenure.connect("gopher://host")


def test_unknown_option_is_rejected(tmp_path: object) -> None:
    with pytest.raises(errors.ConfigurationError, match=r"unknown option.*colour"):
        tenure.connect(f"file://{tmp_path}?colour=blue")
    with pytest.raises(errors.ConfigurationError, match="ttl"):
        tenure.connect(f"file://{tmp_path}", ttl="soon")
    with pytest.raises(errors.ConfigurationError, match="ttl"):
        tenure.connect(f"file://{tmp_path}", ttl=0)
    with pytest.raises(errors.ConfigurationError, match="namespace"):
        tenure.connect(f"file://{tmp_path}", namespace="../up")
    with pytest.raises(errors.ConfigurationError, match="no host"):
        tenure.connect("file://somehost/tmp")


def test_options_from_query_and_keywords(tmp_path: object) -> None:
    with tenure.connect(f"file://{tmp_path}?ttl=7&timeout=1.5", ttl=9) as client:
        assert client.ttl == 9.0  # keywords win over the query string
        assert client.timeout == 1.5


@pytest.mark.parametrize(
    "name", ["", "/abs", "../x", "a/..", "a//b", "./a", "x\x00", "x\n", "x" * 201, "a/"]
)
def test_bad_names(name: str) -> None:
    with pytest.raises(errors.ConfigurationError):
        check_name(name)


@pytest.mark.parametrize("name", ["a", "reports/nightly", "x" * 200, "é/ü", "a.b", "..a", "a b"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


def test_owner_ids_are_128_bit_and_unique() -> None:
    ids = {new_owner_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_retry_strategies() -> None:
    assert NoRetry().delay(1) is None
    fixed = FixedRetry(interval=0.2, max_attempts=2)
    assert [fixed.delay(n) for n in (1, 2, 3)] == [0.2, 0.2, None]
    exp = ExponentialRetry(base=0.1, cap=1.0, max_attempts=5)
    for n in range(1, 6):
        ceiling = min(1.0, 0.1 * 2 ** (n - 1))
        delay = exp.delay(n)
        assert delay is not None
        assert ceiling / 2 <= delay <= ceiling
    assert exp.delay(6) is None
    with pytest.raises(errors.ConfigurationError):
        ExponentialRetry(base=0)
    with pytest.raises(errors.ConfigurationError):
        FixedRetry(interval=-1)


def test_error_tree_matches_the_design() -> None:
    e = errors
    assert issubclass(e.ConfigurationError, e.TenureError)
    assert issubclass(e.ConfigurationError, ValueError)
    assert issubclass(e.BackendUnavailableError, e.BackendError)
    assert issubclass(e.BackendUnavailableError, ConnectionError)
    assert issubclass(e.BackendTimeoutError, e.BackendError)
    assert issubclass(e.BackendTimeoutError, TimeoutError)
    assert issubclass(e.AcquireTimeoutError, e.LockError)
    assert issubclass(e.AcquireTimeoutError, TimeoutError)
    assert issubclass(e.LockLostError, e.NotHeldError)
    assert issubclass(e.NotHeldError, e.LockError)
    assert issubclass(e.NotLeaderError, e.ElectionError)
    assert issubclass(e.ElectionError, e.TenureError)
    assert e.LockError("m", name="x").name == "x"
    for name in e.__all__:
        assert getattr(tenure, name) is getattr(e, name)
