"""DNS names in one spelling: the form gtm compares, stores and publishes.

A name written in Unicode (``bücher.example``) and the same name in punycode
(``xn--bcher-kva.example``) are one name on the wire. Every name of the policy, the inventory and
the providers goes through ``a_label_name`` so that they compare equal: lower case, no trailing
dot, each non-ASCII label encoded as its IDNA 2008 A-label (UTS #46 mapping, as dnspython's
``dns.name.from_text`` does, so the name gtm checks is the name a provider writes).
"""

from __future__ import annotations

import idna

MAX_LABEL = 63
"""Octets in one label (RFC 1035)."""

MAX_NAME = 253
"""Characters in a name written without the trailing dot (255 octets on the wire)."""


def a_label_name(name: str) -> str:
    """``name`` lower case, without the trailing dot, non-ASCII labels as A-labels (``xn--``).

    ASCII labels are only lower-cased (so ``_gtm-owner`` and other underscore labels pass).

    Raises:
        ValueError: the name is empty, has an empty label, a label is not valid IDNA 2008, or a
            label (after encoding) exceeds 63 octets or the name 253 characters.
    """
    text = name.strip().rstrip(".")
    if not text:
        raise ValueError("empty DNS name")
    labels = []
    for label in text.split("."):
        if not label:
            raise ValueError(f"{text!r} is not a valid DNS name (empty label)")
        if label.isascii():
            enc = label.lower()
        else:
            try:
                enc = idna.encode(label, uts46=True).decode("ascii")
            except idna.IDNAError as exc:
                raise ValueError(f"{text!r} is not a valid DNS name: label {label!r}: {exc}") from None
        if len(enc) > MAX_LABEL:
            raise ValueError(f"{text!r} is not a valid DNS name: label {enc!r} is longer than {MAX_LABEL} octets")
        labels.append(enc)
    out = ".".join(labels)
    if len(out) > MAX_NAME:
        raise ValueError(f"{text!r} is not a valid DNS name: longer than {MAX_NAME} characters")
    return out
