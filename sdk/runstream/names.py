"""Run ids and human-friendly run names.

Ids become part of file names (``run-<time>-<id>/``, ``/dev/shm/runstream-<id>-<pid>.ring``) and
of the run path ``entity/project/id``, so user-supplied ids are limited to characters that are
safe in all of those places.  Generated ids come from :mod:`secrets` so that runs started in the
same second on many machines (a sweep, a job array) do not collide.
"""

from __future__ import annotations

import re
import secrets

from runstream.errors import UsageError

RUN_ID_LENGTH = 8
MAX_RUN_ID_LENGTH = 64
_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_VALID_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_RUN_ID_LENGTH}}}")

# ~100 adjectives x ~100 nouns x 999 numbers: about ten million names.  Names are for people
# reading a runs table, not for uniqueness (that is the id's job), so collisions are harmless.
_ADJECTIVES = """
    agile amber ancient autumn azure bold brave breezy bright brisk calm celestial cheerful
    clever cosmic crimson crisp curious daring dashing dawn deep devoted dry dusky eager earnest
    easy electric elegant emerald fancy fearless fiery floral fluent fragrant frosty gallant
    gentle giddy glad glorious golden graceful grand happy hardy hazy helpful hidden honest
    hopeful humble icy jolly jovial keen kind lively lucky lunar magic mellow merry misty modest
    morning mystic neat nimble noble olive patient peach polar proud quiet radiant rapid rare
    restful rising robust rosy royal rustic sandy scarlet serene sharp shiny silent silver sleek
    smooth snowy solar sparkling spring stellar stoic sunny swift tender
""".split()  # noqa: SIM905 (a word list reads better than 100 quoted strings)
_NOUNS = """
    acorn aurora bay beacon bird blossom breeze brook butterfly canyon cedar cloud comet coral
    cosmos cove creek crystal dawn deer delta dew dream dune eagle echo ember falcon fern field
    fire firefly flower fog forest fox frog frost galaxy garden glade glacier grass grove harbor
    hawk haze hill horizon island lake leaf light lily meadow meteor mist moon morning moss
    mountain nebula night oak ocean orbit otter owl paper pebble pine planet pond prairie rain
    resonance river salmon sea shadow shape sky smoke snow sound spark star stone storm sun
    sunset surf thunder tree valley violet voice water wave wildflower wind wood
""".split()  # noqa: SIM905 (a word list reads better than 100 quoted strings)


def new_run_id() -> str:
    """A fresh random id: 8 characters of lowercase base 36 (about 41 bits)."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(RUN_ID_LENGTH))


def new_run_name() -> str:
    """A readable random display name such as ``brisk-river-42``."""
    adjective = secrets.choice(_ADJECTIVES)
    noun = secrets.choice(_NOUNS)
    return f"{adjective}-{noun}-{secrets.randbelow(999) + 1}"


def is_valid_run_id(run_id: object) -> bool:
    """True when ``run_id`` is a str of 1 to 64 characters from ``[A-Za-z0-9_-]``."""
    return isinstance(run_id, str) and _VALID_ID.fullmatch(run_id) is not None


def validate_run_id(run_id: object) -> str:
    """Return ``run_id`` unchanged if it is valid, else raise :class:`UsageError` saying why."""
    if is_valid_run_id(run_id):
        assert isinstance(run_id, str)
        return run_id
    if not isinstance(run_id, str):
        problem = f"it is a {type(run_id).__name__}, not a str"
    elif not run_id:
        problem = "it is empty"
    elif len(run_id) > MAX_RUN_ID_LENGTH:
        problem = f"it is {len(run_id)} characters long"
    else:
        bad = sorted({c for c in run_id if not re.fullmatch(r"[A-Za-z0-9_-]", c)})
        problem = "it contains " + ", ".join(repr(c) for c in bad)
    raise UsageError(
        f"invalid run id {run_id!r}: {problem}. A run id is 1 to {MAX_RUN_ID_LENGTH} characters, "
        "each a letter, digit, '-' or '_' (it becomes part of file names). "
        "Leave id unset to get a generated one."
    )
