"""What the controller needs from a provider: publish a desired state, minimally.

A provider compares what it holds with the desired state and writes only the difference;
publishing a state it already holds makes no write. Providers that need observe → plan →
apply with typed changes (Route 53, Cloud DNS, RFC2136) build on this contract.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from gtm.models.plan import DesiredState


@runtime_checkable
class Publisher(Protocol):
    """A target the controller publishes desired routing to.

    Attributes:
        name: unique provider id, used in metrics, status and ``gtm:{ns}:applied:<name>``.
    """

    name: str

    async def publish(self, state: DesiredState) -> bool:
        """Make the provider serve ``state``.

        Returns:
            True when something was written, False when the provider already held it.

        Raises:
            ProviderError: the write failed (``TemporaryProviderError`` to retry later).
        """
        ...
