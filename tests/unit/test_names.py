"""Names made from free text (folder names, SimpleTuner ids): DNS-label-shaped, readable."""
from __future__ import annotations

import pytest

from runner.spec.names import MAX_NAME, slug


@pytest.mark.parametrize("text, underscore, want", [
    ("My Photos!", False, "my-photos"),
    ("données", False, "donnees"),  # accents keep their base letter
    ("Ñandú çà", False, "nandu-ca"),
    ("ﬁle №5", False, "file-no5"),  # compatibility forms too
    ("写真", False, "fallback"),  # nothing Latin left
    ("Фото 2024", False, "2024"),
    ("my_set", True, "my_set"),
    ("my_set", False, "my-set"),
    ("--x--", False, "x"),
    ("a" * 70, False, "a" * MAX_NAME),
])
def test_slug(text, underscore, want):
    assert slug(text, "fallback", underscore=underscore) == want
