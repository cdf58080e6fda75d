"""Repository identity: every spelling of a repository is one key; others differ."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kargo_bitbucket.core.identity import URL_LIMIT, repository_identity

SAME_REPOSITORY = [
    "https://bitbucket.org/Acme/App",
    "https://bitbucket.org/acme/app",
    "https://bitbucket.org/acme/app/",
    "https://bitbucket.org/acme/app.git",
    "https://bitbucket.org/acme/app.git/",
    "https://user@bitbucket.org/acme/app.git",
    "https://user:token@bitbucket.org/acme/app.git",
    "http://bitbucket.org/acme/app",
    "https://bitbucket.org:443/acme/app",
    "ssh://git@bitbucket.org/acme/app.git",
    "ssh://git@bitbucket.org:22/acme/app.git",
    "git@bitbucket.org:acme/app.git",
    "git@bitbucket.org:Acme/App",
    "bitbucket.org:acme/app.git",
    "  https://bitbucket.org/acme/app.git\n",
    "https://bitbucket.org/acme/\u200bapp",
    "HTTPS://BITBUCKET.ORG/ACME/APP.GIT",
]


@pytest.mark.parametrize("url", SAME_REPOSITORY)
def test_spellings_of_one_repository_share_an_identity(url: str) -> None:
    assert repository_identity(url) == "bitbucket.org/acme/app"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://bitbucket.org/acme/app", "https://bitbucket.org/acme/app2"),
        ("https://bitbucket.org/acme/app", "https://bitbucket.org/other/app"),
        ("https://bitbucket.org/acme/app", "https://bitbucket.example.com/acme/app"),
        ("https://bb.example.com/scm/proj/app.git", "https://bb.example.com/scm/proj/app.git.git"),
        ("https://bb.example.com/bitbucket/scm/p/r.git", "https://bb.example.com/scm/p/r.git"),
    ],
)
def test_different_repositories_differ(a: str, b: str) -> None:
    assert repository_identity(a) != repository_identity(b)


@pytest.mark.parametrize(
    ("url", "identity"),
    [
        ("http://localhost:7990/scm/amuniz/test-repos.git", "localhost/scm/amuniz/test-repos"),
        ("ssh://git@localhost:7999/amuniz/test-repos.git", "localhost/amuniz/test-repos"),
        (
            "https://bb.example.com/scm/~gopher/webhook-test.git",
            "bb.example.com/scm/~gopher/webhook-test",
        ),
        ("https://[::1]:8443/scm/p/r.git", "[::1]/scm/p/r"),
        ("https://bitbucket.org/acme/app.git.git", "bitbucket.org/acme/app.git"),
        ("https://bitbucket.org/acme/app//", "bitbucket.org/acme/app/"),
        # Kargo's URL parser re-escapes paths it trims, so %7E and ~ are one repository.
        ("https://bb.example.com/scm/%7Ejdoe/repo.git", "bb.example.com/scm/~jdoe/repo"),
        ("https://bb.example.com/scm/p%2Fr.git", "bb.example.com/scm/p/r"),
        ("https://bitbucket.org/acme/app.git#readme", "bitbucket.org/acme/app"),
        ("https://bitbucket.org/acme/app?at=main", "bitbucket.org/acme/app"),
        ("https://bitbucket.org/acme/100%", "bitbucket.org/acme/100%"),
    ],
)
def test_server_and_edge_spellings(url: str, identity: str) -> None:
    assert repository_identity(url) == identity


def kargo_normalize(url: str) -> str:
    """Kargo's own rule for HTTP(S) URLs: lower-case, drop userinfo, trailing '/' then '.git'."""
    text = url.strip().lower()
    scheme, _, rest = text.partition("://")
    authority, slash, path = rest.partition("/")
    authority = authority.rpartition("@")[2]
    return f"{scheme}://{authority}{slash}{path}".removesuffix("/").removesuffix(".git")


_segment = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-_~", min_size=1, max_size=12
)


@given(
    host=st.sampled_from(["bitbucket.org", "bb.example.com", "Git.Example.COM:8443"]),
    segments=st.lists(_segment, min_size=1, max_size=4),
    user=st.sampled_from(["", "user@", "u:p@"]),
    suffix=st.sampled_from(["", "/", ".git", ".git/"]),
    other_user=st.sampled_from(["", "x@"]),
    other_suffix=st.sampled_from(["", "/", ".git", ".git/"]),
)
def test_wherever_kargo_matches_we_match(
    host: str, segments: list[str], user: str, suffix: str, other_user: str, other_suffix: str
) -> None:
    path = "/".join(segments)
    a = f"https://{user}{host}/{path}{suffix}"
    b = f"https://{other_user}{host.upper()}/{path}{other_suffix}"
    if kargo_normalize(a) == kargo_normalize(b):
        assert repository_identity(a) == repository_identity(b)


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=URL_LIMIT - 3))
def test_case_and_surrounding_whitespace_never_change_the_identity(url: str) -> None:
    assert repository_identity(url) == repository_identity(f" \t{url.upper()}\n")


def test_a_url_past_the_limit_is_its_own_identity_which_no_shorter_url_has() -> None:
    """Normalising a signed 1.8 MB URL of ``%2F`` held the event loop 0.5 s."""
    base = "https://bitbucket.org/org/repo"
    escapes = base + "%2F" * URL_LIMIT
    assert repository_identity(escapes) == escapes
    assert repository_identity(escapes.upper()) != repository_identity(escapes)
    within = base + "%2f" * ((URL_LIMIT - len(base)) // 3)
    assert repository_identity(within) == repository_identity(within.upper())
    assert len(repository_identity(within)) <= URL_LIMIT
