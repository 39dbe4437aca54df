"""Tenants and keys (genq.api.tenants): GENQ_API_KEYS, the TOML tenants file, and what a bad
configuration says; `genq api` refuses to start without keys, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_support import tenants_file

from genq.api.errors import ApiError
from genq.api.tenants import load_tenants
from genq.errors import ApiConfigError
from genq.settings import Settings

KEY = "sk-genq-0123456789abcdef"


def test_each_key_of_genq_api_keys_is_its_own_stable_tenant() -> None:
    tenants = load_tenants(Settings(api_keys=f"{KEY}, {KEY}-second"))
    first, second = tenants.require(f"Bearer {KEY}"), tenants.require(f"Bearer {KEY}-second")
    assert first.name != second.name
    again = load_tenants(Settings(api_keys=f"{KEY}-second,{KEY}")).require(f"Bearer {KEY}")
    assert again.name == first.name  # reordering the list keeps the tenant
    assert KEY not in first.name


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", f"Basic {KEY}", f"Bearer {KEY}x", "Bearer x"]
)
def test_a_missing_or_wrong_key_is_401(header: str | None) -> None:
    tenants = load_tenants(Settings(api_keys=KEY))
    with pytest.raises(ApiError) as refused:
        tenants.require(header)
    assert refused.value.status == 401


def test_a_tenants_file_gives_keys_webhooks_and_limits(tmp_path: Path) -> None:
    path = tenants_file(
        tmp_path / "t.toml",
        {
            "ads": {
                "keys": [KEY, KEY + "-rotated"],
                "webhook_url": "https://93.184.216.34/hook",
                "webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "max_file_bytes": 1000,
                "max_file_lines": 10,
            },
            "reports": {"keys": [KEY + "-reports"]},
        },
    )
    tenants = load_tenants(Settings(api_tenants_file=str(path)))
    ads = tenants.require(f"Bearer {KEY}-rotated")
    assert (ads.name, ads.max_file_bytes, ads.max_file_lines) == ("ads", 1000, 10)
    assert tenants.require(f"Bearer {KEY}-reports").name == "reports"


@pytest.mark.parametrize(
    ("tenants", "needle"),
    [
        ({"a": {"keys": ["short"]}}, "at least 16"),
        ({"a": {"keys": [KEY]}, "b": {"keys": [KEY]}}, "twice"),
        ({"a": {"keys": []}}, "keys must be"),
        ({"a": {"keys": [KEY], "colour": 1}}, "unknown field"),
        ({"a b": {"keys": [KEY]}}, "tenant name"),
        ({"a": {"keys": [KEY], "webhook_url": "https://93.184.216.34/"}}, "go together"),
        (
            {
                "a": {
                    "keys": [KEY],
                    "webhook_url": "https://93.184.216.34/",
                    "webhook_secret": "plain",
                }
            },
            "whsec_",
        ),
        (
            {
                "a": {
                    "keys": [KEY],
                    "webhook_url": "http://127.0.0.1/h",
                    "webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                }
            },
            "GENQ_WEBHOOK_ALLOW_PRIVATE",
        ),
        ({"a": {"keys": [KEY], "max_file_lines": 0}}, "positive integer"),
    ],
)
def test_a_bad_tenants_file_is_one_clear_error(
    tmp_path: Path, tenants: dict[str, dict[str, object]], needle: str
) -> None:
    path = tenants_file(tmp_path / "t.toml", tenants)
    with pytest.raises(ApiConfigError, match=needle):
        load_tenants(Settings(api_tenants_file=str(path)))


def test_an_unreadable_or_invalid_file_and_no_keys_at_all(tmp_path: Path) -> None:
    with pytest.raises(ApiConfigError, match="cannot read"):
        load_tenants(Settings(api_tenants_file=str(tmp_path / "missing.toml")))
    (tmp_path / "bad.toml").write_text("[tenants.a\n")
    with pytest.raises(ApiConfigError, match="not valid TOML"):
        load_tenants(Settings(api_tenants_file=str(tmp_path / "bad.toml")))
    with pytest.raises(ApiConfigError, match="GENQ_API_KEYS"):
        load_tenants(Settings())


def test_genq_api_without_keys_says_what_to_set_in_one_line(genq_cli: object) -> None:
    result = genq_cli("api", "--port", "0", env={"GENQ_API_KEYS": ""})  # type: ignore[operator]
    assert result.returncode == 2, result.stderr
    assert "GENQ_API_KEYS" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_tenants_file_gives_weights_and_quotas(tmp_path: Path) -> None:
    path = tenants_file(
        tmp_path / "t.toml",
        {
            "ads": {"keys": [KEY], "weight": 3, "max_queued_items": 500, "max_jobs_in_progress": 2},
            "reports": {"keys": [KEY + "-reports"]},
        },
    )
    tenants = load_tenants(Settings(api_tenants_file=str(path)))
    policies = tenants.policies()
    assert policies["reports"] is None
    ads = policies["ads"]
    assert ads is not None
    assert (ads.weight, ads.max_queued_items, ads.max_jobs_in_progress) == (3.0, 500, 2)


@pytest.mark.parametrize(
    ("field", "value"),
    [("weight", 0), ("weight", "heavy"), ("max_queued_items", 0), ("max_jobs_in_progress", 1.5)],
)
def test_a_bad_weight_or_quota_stops_the_api_in_one_line(
    tmp_path: Path, field: str, value: object
) -> None:
    path = tenants_file(tmp_path / "t.toml", {"ads": {"keys": [KEY], field: value}})
    with pytest.raises(ApiConfigError, match=rf"\[tenants.ads\]: {field}"):
        load_tenants(Settings(api_tenants_file=str(path)))
