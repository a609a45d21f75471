"""Where plans are published: DNS providers (Route 53, Cloud DNS, RFC2136, the embedded
authoritative server), anycast (ExaBGP) and Global Accelerator.

Modules are imported directly (``gtm.providers.embedded_dns``...), so that using one provider
never imports another's SDK.
"""
