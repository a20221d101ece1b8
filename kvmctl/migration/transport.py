"""Which destination URIs kvmctl migrates to, and where the stream goes (pure)."""

from __future__ import annotations

from urllib.parse import urlsplit

from kvmctl.errors import UsageError

# Authenticated transports; plain TCP has neither authentication nor encryption.
SECURE_SCHEMES = {"qemu+ssh", "qemu+libssh", "qemu+libssh2", "qemu+tls"}
INSECURE_SCHEMES = {"qemu+tcp"}
LOCAL_SCHEMES = {"qemu", "qemu+unix"}


def check_destination(uri: str, source_uri: str, insecure: bool) -> str:
    """The destination URI, checked; raises UsageError (exit 2) when it is not
    one kvmctl migrates to."""
    try:
        parts = urlsplit(uri)
    except ValueError as err:
        raise UsageError(f"'{uri}' is not a valid libvirt URI ({err})") from None
    scheme = parts.scheme
    if scheme not in SECURE_SCHEMES | INSECURE_SCHEMES | LOCAL_SCHEMES or not parts.path:
        raise UsageError(
            f"'{uri}' is not a destination kvmctl migrates to: use qemu+ssh://HOST/system or "
            "qemu+tls://HOST/system (qemu+tcp:// only with --insecure)"
        )
    if scheme in INSECURE_SCHEMES and not insecure:
        raise UsageError(
            f"'{uri}' is plain TCP: the destination libvirtd would take commands from anyone "
            "and the guest's memory would cross the network in clear; use qemu+ssh:// or "
            "qemu+tls://, or pass --insecure on a private test link"
        )
    if uri.rstrip("/") == source_uri.rstrip("/"):
        raise UsageError(f"the destination {uri} is the source itself")
    return uri


def default_migrate_uri(uri: str) -> str | None:
    """Where the destination QEMU listens: on the address the destination
    libvirtd was reached at (the destination's own hostname may not resolve, or
    resolve to another network, from the source)."""
    host = urlsplit(uri).hostname
    if not host:
        return None  # a local URI: libvirt picks the address itself
    return f"tcp://[{host}]" if ":" in host else f"tcp://{host}"
