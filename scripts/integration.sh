#!/usr/bin/env bash
# The integration suite in three parts (`make integration`; docs/design.md, Testing).
# Each part keeps both CPUs of a 2-CPU host busy: a main pytest, and beside it a
# second one whose tests cannot disturb the main one's.
#   1. alone, the tests that restart libvirtd, run the host role or move the pool's
#      directory aside (`exclusive`); beside them, those that use neither libvirtd
#      nor kvmctl's sets (`no_libvirt`), after $BESIDE_EXCLUSIVE when set (`make
#      test` runs lint and the unit tests there);
#   2. on WORKERS pytest-xdist workers, a module at a time each (its module-scoped
#      guests boot once), longest modules first (tests/integration/schedule.py):
#      every test that needs none of these rules;
#   3. the tests that dedicate a CPU (`dedicated_cpus`: on 2 CPUs that moves every
#      shared set's pool, and a second dedicated set is refused), one at a time;
#      beside them, the tests that create no kvmctl set (`no_set`).
# Every part always runs and each pytest must run at least one test; the script
# fails if any of them (or $BESIDE_EXCLUSIVE) failed. Under a filter (-k, -m,
# --lf, --deselect, a path or node id among the extra arguments) a pytest left
# empty (its exit 5) is no failure. Interrupted (SIGINT, SIGTERM), it interrupts
# every pytest it started, so their finalizers remove what the tests made, and
# prints what they said.
#
#   [BESIDE_EXCLUSIVE=command] scripts/integration.sh PYTEST WORKERS [pytest args...]
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

# The status of one pytest (or command) as the script counts it.
counted() {
    local rc=$1
    if [ "$rc" -eq 5 ] && [ "$filtered" -eq 1 ]; then rc=0; fi
    echo "$rc"
}
status=0
settle() {
    local rc
    rc=$(counted "$1")
    [ "$rc" -eq 0 ] || status=$rc
}

# Every pytest runs as a background job in its own process group (job control),
# waited for, so a signal reaches the trap at once and is passed on exactly once
# to each group, whoever sent it. `env` restores SIGINT where this script was
# started with it ignored, so an interrupt runs pytest's finalizers. Stdin is
# /dev/null, as for any background job without job control: a job reading the
# terminal would be stopped (SIGTTIN), not ended.
set -m
run_pytest() {
    env --default-signal=INT $pytest "${paths[@]}" "$@" </dev/null
}

# The second pytest of a part, after FIRST-COMMAND when one is given: in a
# background subshell (a process group of its own), its output kept in a file and
# printed after the part, so the two do not interleave. TERM to the subshell
# interrupts its group with INT and skips what it has not started.
beside_out=$(mktemp -t kvmctl-beside.XXXXXX)
trap 'rm -f "$beside_out"' EXIT
beside_pid= beside_label=
beside() { # LABEL FIRST-COMMAND PYTEST-ARGS...
    beside_label=$1
    local first=$2
    shift 2
    (
        set +m # its commands stay in its group
        st=0 stopping=0 child=
        trap '' INT
        trap 'stopping=1; kill -INT -- -"$BASHPID" 2>/dev/null' TERM
        finish() {
            wait "$child"
            local rc=$?
            wait "$child" 2>/dev/null # again, if TERM cut the first wait short
            [ "$stopping" -eq 0 ] || exit 130
            return "$rc"
        }
        if [ -n "$first" ]; then
            env --default-signal=INT bash -c "$first" </dev/null &
            child=$!
            finish || st=$?
        fi
        [ "$stopping" -eq 0 ] || exit 130
        run_pytest "$@" &
        child=$!
        finish
        rc=$(counted $?)
        [ "$rc" -eq 0 ] || st=$rc
        exit "$st"
    ) >"$beside_out" 2>&1 &
    beside_pid=$!
}
beside_done() { # STATUS (the subshell's, when a wait had it already)
    [ -n "$beside_pid" ] || return 0
    local rc=${1:-}
    if [ -z "$rc" ]; then
        wait "$beside_pid"
        rc=$?
    fi
    echo "=== $beside_label"
    cat "$beside_out"
    beside_pid=
    [ "$rc" -eq 0 ] || status=$rc
}

main_pid=
main() {
    run_pytest "$@" &
    main_pid=$!
    wait "$main_pid"
    settle $?
    main_pid=
}
stop() {
    # Once: a second Ctrl-C would leave the tests' domains and labs behind.
    trap '' INT TERM HUP
    echo "integration: SIG$1, waiting for the tests' finalizers"
    [ -z "$main_pid" ] || kill -INT -- -"$main_pid" 2>/dev/null
    [ -z "$beside_pid" ] || kill -TERM "$beside_pid" 2>/dev/null
    wait
    beside_done 130
    echo "integration: interrupted by SIG$1"
    exit 130
}
trap 'stop INT' INT
trap 'stop TERM' TERM
trap 'stop HUP' HUP

beside "beside the exclusive tests: ${BESIDE_EXCLUSIVE:+$BESIDE_EXCLUSIVE, then }the tests that use no libvirtd" \
    "${BESIDE_EXCLUSIVE:-}" -m "no_libvirt and not exclusive" --durations=5 "$@"
main -m exclusive --durations=5 "$@"
beside_done

main -m "not exclusive and not no_libvirt and not dedicated_cpus and not no_set" \
    -n "$workers" --dist loadfile --no-loadscope-reorder --durations=15 "$@"

beside "beside the dedicated-CPU tests: the tests that create no kvmctl set" "" \
    -m "no_set and not exclusive" --durations=5 "$@"
main -m "dedicated_cpus and not exclusive" --durations=10 "$@"
beside_done

exit "$status"
