"""Redaction masks every secret it is told of and costs time linear in the text it reads."""

from __future__ import annotations

import json
import statistics
import string
import time
from collections.abc import Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conveyor.records import JobInfo
from conveyor.redact import MASK, MAX_SHOWN, TOO_DEEP, Redactor, redact_job

SECRET_CHARS = string.ascii_letters + string.digits + "-_."
secrets = st.text(SECRET_CHARS, min_size=6, max_size=40)
noise = st.text(max_size=200)
names = st.sampled_from(
    [
        "password",
        "db_password",
        "PASSWD",
        "pwd",
        "passphrase",
        "client_secret",
        "api-key",
        "apiKey",
        "token",
        "access_token",
        "private_key",
        "credentials",
        "Authorization",
    ]
)

#: How a secret appears in free text: the rule of the module docstring that must catch it.
FORMS: dict[str, Callable[[str, str], str]] = {
    "pair": lambda name, s: f"{name}={s}",
    "spaced pair": lambda name, s: f"{name} : {s}",
    "json pair": lambda name, s: f'"{name}": "{s}"',
    "quoted pair": lambda name, s: f"{name}='{s}'",
    "url": lambda name, s: f"postgresql://app:{s}@db.internal:5432/jobs",
    "url query": lambda name, s: f"redis://cache:6379/0?{name}={s}",
    "bearer": lambda name, s: f"Authorization: Bearer {s}",
}


@settings(max_examples=300, deadline=None)
@given(before=noise, after=noise, secret=secrets, name=names, form=st.sampled_from(sorted(FORMS)))
def test_a_secret_in_any_form_and_context_is_masked(
    before: str, after: str, secret: str, name: str, form: str
) -> None:
    assume(secret not in before + after + FORMS[form](name, "\0"))  # e.g. 'Author' in 'Authorization'
    text = before + " " + FORMS[form](name, secret) + " " + after
    assert secret not in Redactor().text(text).replace(MASK, "\0")


@settings(max_examples=300, deadline=None)
@given(before=noise, after=noise, secret=secrets)
def test_a_secret_argument_is_scrubbed_from_any_text(before: str, after: str, secret: str) -> None:
    redactor = Redactor()
    redactor.arguments(json.dumps([["ada"], {"password": secret}]).encode(), None)
    assert secret not in redactor.text(before + secret + after + secret)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=500))
def test_text_without_secrets_is_shown_as_it_is(text: str) -> None:
    redactor = Redactor()
    shown = redactor.text(text)
    if "://" not in text and not any(
        k in text.lower() for k in ("pass", "pwd", "secret", "token", "key", "auth", "credential")
    ):
        assert shown == text


def test_overlapping_secrets_are_masked_whole() -> None:
    redactor = Redactor()
    redactor.arguments(json.dumps([[], {"token": "abcdef", "secret": "abcdefghij"}]).encode(), None)
    assert redactor.text("x abcdefghij y abcdef z") == f"x {MASK} y {MASK} z"


def test_long_text_is_cut_after_it_is_redacted() -> None:
    redactor = Redactor()
    redactor.arguments(json.dumps([[], {"password": "p" * 50}]).encode(), None)
    shown = redactor.text("x" * MAX_SHOWN + "p" * 50)
    assert "pppp" not in shown
    assert shown.endswith("more characters not shown]")


def test_nesting_too_deep_to_decode_is_not_shown_and_raises_nothing() -> None:
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    info = JobInfo(
        id="j",
        task="t",
        queue="q",
        priority=0,
        state="dead",
        payload=deep,
        attempt=1,
        max_attempts=1,
        run_at=0.0,
        enqueued_at=0.0,
        started_at=None,
        finished_at=None,
        key=None,
        result=deep,
        errors=[{"message": "x"}],
        worker=None,
        lease_until=None,
    )
    shown = redact_job(info, None)
    assert shown.arguments is None
    assert shown.result is not None and len(shown.result) <= MAX_SHOWN + 100


def test_nesting_deeper_than_shown_is_summarised() -> None:
    value: object = "leaf"
    for _ in range(200):
        value = [value]
    shown = json.dumps(Redactor().value(value))
    assert TOO_DEEP in shown and "leaf" not in shown


# -- cost: linear in the text ------------------------------------------------------------------

#: Texts that made the regular expressions of the first version quadratic (each a run repeated),
#: and the shapes around each rule's hits.
SHAPES = {
    "word run": "x",
    "keyword run": "token",
    "unclosed quote": 'token="',
    "keyword and space": "token ",
    "pairs": "token=a ",
    "schemes": "a://",
    "authority run": "://x",
    "user info": "a:b@",
    "mixed": "password:x-",
    "bearer": "Authorization: Bearer ",
    "hex": "0123456789abcdef",
    "ampersands": "token=a&b&",
}


def _median_seconds(text: str, known: list[str]) -> float:
    runs = []
    for _ in range(3):
        redactor = Redactor()
        redactor.found.update(known)
        began = time.perf_counter()
        redactor.text(text)
        runs.append(time.perf_counter() - began)
    return statistics.median(runs)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_redaction_time_grows_linearly_up_to_a_mebibyte(shape: str) -> None:
    """16 times the text may cost about 16 times the time; quadratic cost would be 256 times."""
    unit = SHAPES[shape]
    known = ["xxxxxxxx" * 4, unit * 3, "a" * 5 + "b"]  # values that partly match everywhere
    small, large = 1 << 16, 1 << 20
    t_small = _median_seconds((unit * (small // len(unit) + 1))[:small], known)
    t_large = _median_seconds((unit * (large // len(unit) + 1))[:large], known)
    ratio = t_large / max(t_small, 1e-6)
    assert ratio < 16 * 4, f"{shape}: 16x the text took {ratio:.0f}x the time"
