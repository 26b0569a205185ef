"""What a public demo may show: text with the server's file-system paths taken out.

The page and the API answer strangers (``--share`` puts them on a public link), so model cards, configs
and error messages pass through :func:`scrub_paths` before they leave the server: every absolute path
(POSIX, home-relative or Windows) keeps only its last component, so a message still names the file
it is about without saying where the server keeps it. URLs and relative paths are left alone.
"""

from __future__ import annotations

import re

_DIRECTORIES = re.compile(
    r"(?<![\w.~:/\\-])"  # not inside a word, a relative path or a URL
    r"(?:~|[A-Za-z]:)?"  # home-relative, or a Windows drive
    r"[/\\](?:[^\s/\\'\"`<>|:;,()\[\]{}]+[/\\])+"  # the directories, each followed by a separator
)


def scrub_paths(text: str) -> str:
    """``text`` with the directories of every absolute path removed:
    ``"missing file: /srv/app/models/unet/model.safetensors"`` -> ``"missing file: model.safetensors"``."""
    return _DIRECTORIES.sub("", text)
