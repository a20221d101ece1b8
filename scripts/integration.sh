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
# any part failed. Under a filter (-k, -m, --lf, --deselect, a path or node id
# among the extra arguments) a part left empty (pytest's exit 5) is no failure.
# Interrupted (SIGINT, SIGTERM), it interrupts every pytest it started, so their
# finalizers remove what the tests made, and prints what they said.
#
#   scripts/integration.sh PYTEST WORKERS [pytest args...]
set -uo pipefail

pytest=$1 workers=$2
shift 2

filtered=0
paths=(tests/integration) # unless the arguments name test files or node ids
for arg in "$@"; do
    case $arg in
        tests/* | *::* | *.py) filtered=1 paths=() ;;
        -k* | -m* | --lf | --last-failed | --deselect*) filtered=1 ;;
    esac
done

status=0
settle() {
    local rc=$1
    if [ "$rc" -eq 5 ] && [ "$filtered" -eq 1 ]; then rc=0; fi
    [ "$rc" -eq 0 ] || status=$rc
}

beside=$(mktemp -t kvmctl-no-set.XXXXXX)
beside_pid=
shown=0
show_beside() {
    [ "$shown" -eq 0 ] || return 0
    shown=1
    echo "=== tests that create no kvmctl set, run beside the dedicated-CPU tests"
    cat "$beside"
}
trap 'rm -f "$beside"' EXIT

# Each pytest runs in the background, waited for, so a signal reaches the trap at
# once. A script's background job starts with SIGINT ignored: `env` restores it,
# so an interrupt runs pytest's finalizers instead of being lost.
pids=()
start() {
    env --default-signal=INT $pytest "${paths[@]}" "$@" &
    pids+=("$!")
}
stop() {
    trap - INT TERM
    # A terminal's Ctrl-C reached every pytest already; a TERM reached only us.
    [ "$1" = INT ] || kill -INT "${pids[@]}" 2>/dev/null
    wait
    [ -z "$beside_pid" ] || show_beside
    echo "integration: interrupted by SIG$1"
    exit 130
}
trap 'stop INT' INT
trap 'stop TERM' TERM

start -m "not exclusive and not dedicated_cpus and not no_set" \
    -n "$workers" --dist loadfile --durations=15 "$@"
wait "$!"
settle $?

start -m "no_set and not exclusive" --durations=5 "$@" >"$beside" 2>&1
beside_pid=$!
start -m "dedicated_cpus and not exclusive" --durations=10 "$@"
wait "$!"
settle $?
wait "$beside_pid"
beside_rc=$?
show_beside
settle "$beside_rc"

start -m exclusive --durations=5 "$@"
wait "$!"
settle $?

exit "$status"
