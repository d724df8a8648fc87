"""FHIR server URLs in normal form: the tricks that would carry an EHR's access token outside
its registered base are resolved before the check or refused, and what a request may send
for fetching (fhirServer, the token, context values) is checked before anything is sent."""

from __future__ import annotations

import pytest

from personalize.service import fhir_fetch
from personalize.service.cds_clients import CdsClient
from personalize.service.fhir_urls import MAX_URL_CHARS, UnsafeUrl, parse, parse_base

BASE = parse_base("https://ehr.example.org/fhir")


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("https://ehr.example.org/fhir/Patient/1", "https://ehr.example.org/fhir/Patient/1"),
        ("HTTPS://EHR.Example.ORG/fhir/Patient/1", "https://ehr.example.org/fhir/Patient/1"),
        ("https://ehr.example.org:443/fhir", "https://ehr.example.org/fhir"),
        ("http://ehr.example.org:80/fhir", "http://ehr.example.org/fhir"),
        ("https://ehr.example.org:8443/fhir", "https://ehr.example.org:8443/fhir"),
        ("https://ehr.example.org/fhir/../other", "https://ehr.example.org/other"),
        ("https://ehr.example.org/fhir/./Patient/./1", "https://ehr.example.org/fhir/Patient/1"),
        ("https://ehr.example.org/fhir/%2e%2e/other", "https://ehr.example.org/other"),
        ("https://ehr.example.org/fhir/%2E%2E/other", "https://ehr.example.org/other"),
        ("https://ehr.example.org/fhir/.%2E/other", "https://ehr.example.org/other"),
        ("https://ehr.example.org/fhir/%2e/Patient", "https://ehr.example.org/fhir/Patient"),
        ("https://ehr.example.org/fhir\\..\\other", "https://ehr.example.org/other"),
        ("https://ehr.example.org/fhir\\Patient", "https://ehr.example.org/fhir/Patient"),
        ("https://ehr.example.org//fhir//Patient", "https://ehr.example.org/fhir/Patient"),
        ("https://ehr.example.org/fhir/../../../../etc", "https://ehr.example.org/etc"),
        ("https://ehr.example.org/fhir/%41%7e", "https://ehr.example.org/fhir/A~"),
        ("https://ehr.example.org/fhir/a%3bb", "https://ehr.example.org/fhir/a%3Bb"),
        (
            "https://ehr.example.org/fhir/Obs?code=a%7Cb#top",
            "https://ehr.example.org/fhir/Obs?code=a%7Cb",
        ),
        (
            "https://ehr.example.org/fhir/x?next=../../y",
            "https://ehr.example.org/fhir/x?next=../../y",
        ),
        ("https://ehr.example.org", "https://ehr.example.org/"),
        ("http://[0:0:0:0:0:0:0:1]:8080/fhir", "http://[::1]:8080/fhir"),
        ("http://[::FFFF:7F00:1]/fhir", "http://[::ffff:7f00:1]/fhir"),
        ("http://127.0.0.1:5000/fhir/", "http://127.0.0.1:5000/fhir/"),
    ],
)
def test_urls_are_put_in_one_normal_form(url: str, normal: str) -> None:
    assert str(parse(url)) == normal


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://ehr.example.org/fhir\n", "U\\+000A"),
        ("https://ehr.example.org/fhir\t", "U\\+0009"),
        ("https://ehr.example.org/fhir ", "U\\+0020"),
        (" https://ehr.example.org/fhir", "U\\+0020"),
        ("https://ehr.example.org/fh\rir", "U\\+000D"),
        ("https://ehr.example.org/fhir\x00", "U\\+0000"),
        ("https://ehr.example.org/fhir\u00a0", "U\\+00A0"),
        ("https://ehr.example.org/fhir\u202e", "U\\+202E"),
        ("https://ehr.example.org\uff0fevil", "non-ASCII"),
        ("https://ehr.example.org/" + "a" * MAX_URL_CHARS, f"longer than {MAX_URL_CHARS}"),
        ("ftp://ehr.example.org/fhir", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("//ehr.example.org/fhir", "http:// or https://"),
        ("/fhir/Patient/1", "http:// or https://"),
        ("https:ehr.example.org/fhir", "no host"),
        ("https:/ehr.example.org/fhir", "no host"),
        ("https:///fhir", "no valid host"),
        ("https://ehr.example.org@evil.example/fhir", "userinfo"),
        ("https://user:pw@ehr.example.org/fhir", "userinfo"),
        ("https://evil.example\\@ehr.example.org/fhir", "backslash in its host"),
        ("https://ehr.example.org\\fhir", "backslash in its host"),
        ("https:\\\\ehr.example.org/fhir", "no host"),
        ("https://ehr%2eexample.org/fhir", "percent-encoded host"),
        ("https://ehr.example.org:0/fhir", "invalid port"),
        ("https://ehr.example.org:65536/fhir", "invalid port"),
        ("https://ehr.example.org:+80/fhir", "invalid port"),
        ("https://ehr.example.org:8o/fhir", "invalid port"),
        ("http://[::1/fhir", "unclosed IPv6"),
        ("http://[::g]/fhir", "invalid IPv6"),
        ("http://[fe80::1%25eth0]/fhir", "percent-encoded host"),
        ("http://[::1]x/fhir", "after the IPv6"),
        ("https://ehr.example.org/fhir/..%2fother", "encoded '/'"),
        ("https://ehr.example.org/fhir/..%2Fother", "encoded '/'"),
        ("https://ehr.example.org/fhir/..%5cother", "encoded '\\\\'"),
        ("https://ehr.example.org/fhir/%252e%252e/other", "encoded '%'"),
        ("https://ehr.example.org/fhir/%0a", "control or non-ASCII"),
        ("https://ehr.example.org/fhir/%c3%a9", "control or non-ASCII"),
        ("https://ehr.example.org/fhir/%zz", "invalid percent-encoding"),
        ("https://ehr.example.org/fhir/%+1", "invalid percent-encoding"),
        ("https://ehr.example.org/fhir/%4", "invalid percent-encoding"),
        ("https://ehr.example.org/fhir/..;/other", "'..;'"),
        ("https://ehr.example.org/fhir/%2e%2e;x/other", "'..;'"),
        ("", "not a URL"),
    ],
)
def test_urls_a_server_might_read_two_ways_are_refused(url: str, why: str) -> None:
    with pytest.raises(UnsafeUrl, match=why):
        parse(url)


@pytest.mark.parametrize(
    ("url", "under"),
    [
        ("https://ehr.example.org/fhir", True),
        ("https://ehr.example.org/fhir/", True),
        ("https://ehr.example.org/fhir/Observation?_offset=2", True),
        ("https://EHR.example.org:443/fhir/./Observation", True),
        ("https://ehr.example.org/fhir/../other/Observation", False),
        ("https://ehr.example.org/fhir/%2e%2e/other/Observation", False),
        ("https://ehr.example.org/fhir\\..\\other", False),
        ("https://ehr.example.org/fhirother/Observation", False),  # a prefix, not a segment
        ("https://ehr.example.org/fhir.evil/Observation", False),
        ("https://ehr.example.org/", False),
        ("http://ehr.example.org/fhir/Observation", False),  # another scheme
        ("https://ehr.example.org:8443/fhir/Observation", False),  # another port
        ("https://ehr.example.org.evil.example/fhir/Observation", False),
        ("https://evil.example/fhir/Observation", False),
    ],
)
def test_what_is_under_a_base_is_decided_in_normal_form(url: str, under: bool) -> None:
    assert parse(url).is_under(BASE) is under


def test_a_base_at_the_root_covers_its_whole_origin_and_nothing_else() -> None:
    root = parse_base("http://[::1]:8080/")
    assert parse("http://[0::1]:8080/fhir/Patient/1").is_under(root)
    assert not parse("http://[::1]:8081/fhir").is_under(root)
    assert not parse("http://[::2]:8080/fhir").is_under(root)


def test_a_base_has_no_query_and_no_trailing_slash() -> None:
    assert str(parse_base("https://ehr.example.org/fhir//")) == "https://ehr.example.org/fhir"
    assert BASE.join("/Patient/1") == "https://ehr.example.org/fhir/Patient/1"
    for url in ("https://ehr.example.org/fhir?x=1", "https://ehr.example.org/fhir#x"):
        with pytest.raises(UnsafeUrl, match="query or fragment"):
            parse_base(url)


def test_a_client_is_allowed_its_servers_in_any_spelling_but_no_repaired_one() -> None:
    client = CdsClient(
        "https://ehr.example.org",
        "https://ehr.example.org/jwks",
        ("https://ehr.example.org/fhir/", "http://[::1]:8080/r4"),
    )
    for same in (
        "https://ehr.example.org/fhir",
        "https://ehr.example.org/fhir/",
        "HTTPS://EHR.EXAMPLE.ORG:443/fhir",
        "https://ehr.example.org//fhir",
        "https://ehr.example.org/x/../fhir",
        "http://[0:0::1]:8080/r4",
    ):
        assert client.allows_fhir_server(same), same
    for other in (
        "https://ehr.example.org/fhir\n",
        "https://ehr.example.org/fhir\t",
        " https://ehr.example.org/fhir",
        "https://ehr.example.org/fhir/../admin",
        "https://ehr.example.org/fhir/%2e%2e/admin",
        "https://ehr.example.org/fhir/Patient",
        "https://ehr.example.org@evil.example/fhir",
        "http://ehr.example.org/fhir",
        "https://ehr.example.org:8443/fhir",
        "https://ehr.example.org/fhir?x=1",
        "http://169.254.169.254/latest",
    ):
        assert not client.allows_fhir_server(other), other


def test_a_registered_server_the_service_cannot_fetch_from_matches_nothing() -> None:
    client = CdsClient("https://ehr.example.org", "https://x/jwks", ("https://ehr example/fhir",))
    assert not client.allows_fhir_server("https://ehr example/fhir")


# ---------------------------------------------------------------- what a request may send


def test_fhir_server_is_refused_as_sent_naming_the_field() -> None:
    assert str(fhir_fetch.requested_server("HTTPS://ehr.example.org/fhir/")) == str(BASE)
    for bad, why in (
        ("https://ehr.example.org/fhir\n", "U\\+000A"),
        ("https://ehr.example.org/fhir\t", "U\\+0009"),
        ("https://user@ehr.example.org/fhir", "userinfo"),
        ("gopher://ehr.example.org/fhir", "http"),
        ("https://ehr.example.org/" + "f" * 3000, "longer than 2048"),
    ):
        with pytest.raises(fhir_fetch.RequestInvalid, match=f"^fhirServer .*{why}"):
            fhir_fetch.requested_server(bad)


def test_an_access_token_must_travel_unchanged_in_a_bearer_header() -> None:
    assert fhir_fetch.requested_token(None) is None
    assert fhir_fetch.requested_token({"token_type": "Bearer"}) is None
    assert fhir_fetch.requested_token({"access_token": "eyJ.a-b_c~+/="}) == "eyJ.a-b_c~+/="
    for bad, why in (
        ("tok\nen", "not accepted"),
        ("token\r\nX-Injected: 1", "not accepted"),
        ("tok en", "not accepted"),
        ("tokén", "not accepted"),
        ("t" * (fhir_fetch.MAX_TOKEN_CHARS + 1), f"longer than {fhir_fetch.MAX_TOKEN_CHARS}"),
        ("", "non-empty string"),
        (12345, "non-empty string"),
    ):
        with pytest.raises(
            fhir_fetch.RequestInvalid, match=f"^fhirAuthorization.access_token.*{why}"
        ):
            fhir_fetch.requested_token({"access_token": bad})


def test_context_values_filled_into_queries_are_plain_identifiers() -> None:
    template = "Observation?subject={{context.patientId}}&code=a|b"
    filled = fhir_fetch.fill_template(template, {"patientId": "pat-9"})
    assert filled == "Observation?subject=pat-9&code=a|b"
    assert fhir_fetch.fill_template("Patient/{{context.patientId}}", {"patientId": "a/b"}) == (
        "Patient/a%2Fb"
    )
    for bad in ("pat\n9", "pat 9", "pat\t", "\u202epat", "..", ".", "p" * 257):
        with pytest.raises(fhir_fetch.RequestInvalid, match=r"^context\.patientId"):
            fhir_fetch.fill_template(template, {"patientId": bad})
    with pytest.raises(fhir_fetch.FetchFailed, match="no 'patientId'"):
        fhir_fetch.fill_template(template, {})


def test_a_query_never_leaves_the_base_whatever_the_context() -> None:
    server = fhir_fetch.requested_server("https://ehr.example.org/fhir")
    with pytest.raises(fhir_fetch.FetchFailed, match="encoded '/'"):
        fhir_fetch._query_url(
            server, fhir_fetch.fill_template("Patient/{{context.p}}", {"p": "../x"})
        )
    assert fhir_fetch._query_url(server, "Patient/1") == "https://ehr.example.org/fhir/Patient/1"
    with pytest.raises(fhir_fetch.FetchFailed, match="leaves the FHIR server's base"):
        fhir_fetch._query_url(server, "../admin")


def test_the_breaker_leaves_a_server_alone_for_a_while_then_tries_it_again() -> None:
    now = [100.0]
    breaker = fhir_fetch.CircuitBreaker(seconds=30, clock=lambda: now[0])
    key, other = ("iss", "https://ehr.example.org/fhir"), ("iss", "https://other/fhir")
    assert breaker.wait(key) is None
    breaker.trip(key)
    now[0] += 10
    assert breaker.wait(key) == pytest.approx(20) and breaker.wait(other) is None
    now[0] += 20
    assert breaker.wait(key) is None  # tried again: one more failure trips it again
    breaker.trip(key)
    breaker.reset(key)  # an answer closes it
    assert breaker.wait(key) is None
