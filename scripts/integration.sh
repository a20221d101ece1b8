#!/usr/bin/env bash
# The integration suite in three parts (`make integration`; docs/design.md, Testing):
#   1. on WORKERS pytest-xdist workers, a module at a time each (its module-scoped
#      guests boot once): every test that needs none of the rules below;
#   2. the tests that dedicate a CPU (`dedicated_cpus`: on 2 CPUs that moves every
#      shared set's pool, and a second dedicated set is refused), one at a time,
#      while the tests that create no kvmctl set (`no_set`) run beside them in a
#      second pytest process;
#   3. alone, the tests that restart libvirtd, run the host role or move the
#      pool's directory aside (`exclusive`).
# Every part always runs and each must run at least one test; the script fails if
# any part failed. With extra pytest arguments (a filter), a part left empty
# (pytest's exit 5) is no failure.
#
#   scripts/integration.sh PYTEST WORKERS [pytest args...]
set -uo pipefail

pytest=$1 workers=$2
shift 2
status=0

# Read a part's exit status: 5 ("no tests collected") passes only under a filter.
filtered=$#
settle() {
    local rc=$1
    if [ "$rc" -eq 5 ] && [ "$filtered" -gt 0 ]; then rc=0; fi
    [ "$rc" -eq 0 ] || status=$rc
}

$pytest tests/integration -m "not exclusive and not dedicated_cpus and not no_set" \
    -n "$workers" --dist loadfile --durations=15 "$@"
settle $?

beside=$(mktemp -t kvmctl-no-set.XXXXXX)
trap 'rm -f "$beside"' EXIT
$pytest tests/integration -m "no_set and not exclusive" --durations=5 "$@" >"$beside" 2>&1 &
beside_pid=$!
$pytest tests/integration -m "dedicated_cpus and not exclusive" --durations=10 "$@"
settle $?
wait "$beside_pid"
beside_rc=$?
echo "=== tests that create no kvmctl set, run beside the dedicated-CPU tests"
cat "$beside"
settle "$beside_rc"

$pytest tests/integration -m exclusive --durations=5 "$@"
settle $?

exit "$status"
