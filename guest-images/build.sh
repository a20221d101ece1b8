#!/bin/bash
# Build the kvmctl test-guest images (see README.md). No arguments: every
# flavour, into ${KVMCTL_IMAGE_DIR:-/var/lib/kvmctl/images}. Idempotent; a
# second run with nothing changed returns in about a second.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=/usr/bin/python3
[ -x "$python" ] || python=python3
exec "$python" "$here/build.py" "$@"
