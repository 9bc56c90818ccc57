#!/usr/bin/env bash
# Earth2Studio's own IO tests (test/io/ of an Earth2Studio checkout) on e2fastio's classes.
#
#   scripts/earth2studio_io_suite.sh /path/to/earth2studio [pytest args...]
#
# The tests are copied to a scratch folder with a conftest that puts e2fastio's
# ZarrBackend, AsyncZarrBackend, NetCDF4Backend, KVBackend and XarrayBackend
# where they import Earth2Studio's (earth2studio.io), and run on the CPU
# (-k "not cuda"). Needs the installed e2fastio, earth2studio (the compare
# extra) and pytest-asyncio. Failures are expected where a test reaches into
# Earth2Studio's private attributes or checks isinstance(root, netCDF4.Dataset):
# docs/compat.md lists them; compare the set before and after a change.
set -euo pipefail
src=${1:?usage: $0 EARTH2STUDIO_CHECKOUT [pytest args...]}
shift
[ -d "$src/test/io" ] || { echo "$src/test/io: not an Earth2Studio checkout" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/test"
cp -r "$src/test/io" "$work/test/io"
cat > "$work/test/io/conftest.py" <<'PY'
import earth2studio.io as e2s_io

import e2fastio

for _name in ("ZarrBackend", "AsyncZarrBackend", "NetCDF4Backend", "KVBackend", "XarrayBackend"):
    setattr(e2s_io, _name, getattr(e2fastio, _name))
PY
printf '[pytest]\nasyncio_mode = auto\nmarkers =\n    slow\n' > "$work/pytest.ini"
cd "$work"
python -m pytest -q -p no:cacheprovider -W ignore -k "not cuda" -rf test/io "$@"
