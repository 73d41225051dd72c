#!/usr/bin/env bash
# The whole test suite, in stages, after vagrant/provision.sh has set the machine up (`make test`).
#
#   0 sweep          labkit cleanup: remove and report leftovers of EARLIER runs on this machine
#   1 unit           pytest tests/unit (no root needed)
#   2 integration    pytest tests/integration (root: real namespaces, cgroups, links, the lab server)
#     reliability    tests/reliability_report.py over integration.xml: faults, bad inputs, leaks
#   3 notebooks      nbval --nbval-lax over every notebook
#   4 v2tier         the pure cgroup-v2 tier inside a microVM (tests/v2tier/run.py, when it exists)
#     classroom      the classroom image (deploy/build-image.sh, cached on its inputs), two learner
#                    containers running nbval at once, the host clean after; the hub run (tests/classroom/)
#     guest          the learner's platform: a fresh Debian 13 guest (systemd, pure cgroup v2) under qemu
#                    runs the tests and every notebook (tests/guest/run.py; GUEST_STAGES picks which);
#                    only with GUEST=1 (`make test GUEST=1`): see the README for its running time
#   5 provision      vagrant/provision.sh again: must report "nothing changed" (idempotence)
#   6 vagrant        vagrant validate
#   7 shellcheck     every shell script: vagrant/, tests/, scripts/, benchmarks/, .ci/run
#   8 leaks          labkit cleanup --check: what THIS run left behind
#
# Every stage runs even when an earlier one failed; the script prints a table of results and
# durations, then `N passed, N failed, N skipped` summed over the pytest stages (the v2 tier's pytest
# runs inside the microVM, the guest's inside the Debian 13 guest: their closing lines are counted
# too), and exits non-zero if
# any stage failed.
#
# "No tests collected" (pytest exit 5): a stage whose inputs do not exist yet (no notebooks/*.ipynb,
# no tests/v2tier/run.py) is reported as SKIP and does not fail the run - the project grows chapter by
# chapter. A stage whose inputs DO exist but collects nothing FAILS: tests that silently vanished
# (a broken conftest, a wrong path) must not pass as green.
# The stage functions are called through `stage NAME ... -- FUNCTION`, which shellcheck cannot follow:
# shellcheck disable=SC2317
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

VENV=${LABKIT_VENV:-$PWD/.venv}
PY=$VENV/bin/python
LABKIT=$VENV/bin/labkit
OUT=${TEST_OUTPUT:-$PWD/test-output}
mkdir -p "$OUT"
# A test that skips because something provisioning installs is missing fails here (tests/conftest.py).
export LABKIT_STRICT_SKIPS=1

NAMES=() RESULTS=() TIMES=() NOTES=()
PASSED=0 FAILED=0 SKIPPED=0
STAGE_NOTE=""

banner() {
    printf '\n%s\n' "======================================================================================"
    printf '== stage %s: %s\n' "$1" "$2"
    printf '%s\n' "======================================================================================"
}

record() {   # name result seconds note
    NAMES+=("$1") RESULTS+=("$2") TIMES+=("$3") NOTES+=("$4")
    printf '== stage %s: %s in %ss%s\n' "$1" "$2" "$3" "${4:+ ($4)}"
}

# stage NAME TIMEOUT_SECONDS DESCRIPTION -- COMMAND...
# COMMAND's exit status: 0 PASS, 77 SKIP (reason in STAGE_NOTE), anything else FAIL.
stage() {
    local name=$1 limit=$2 what=$3 start rc result
    shift 4
    banner "$name" "$what"
    STAGE_NOTE=""
    start=$(date +%s)
    "$@"
    rc=$?
    case $rc in
        0) result=PASS ;;
        77) result=SKIP ;;
        124|137) result=FAIL; STAGE_NOTE="timed out after ${limit}s" ;;
        *) result=FAIL; STAGE_NOTE=${STAGE_NOTE:-"exit status $rc"} ;;
    esac
    record "$name" "$result" "$(( $(date +%s) - start ))" "$STAGE_NOTE"
}

# Sum passed/failed/skipped from a pytest JUnit XML file into the totals.
count_junit() {
    local counts
    counts=$("$PY" tests/junit_counts.py "$1")
    read -r p f s <<< "$counts"
    PASSED=$((PASSED + p)) FAILED=$((FAILED + f)) SKIPPED=$((SKIPPED + s))
    STAGE_NOTE="$p passed, $f failed, $s skipped"
}

# run_pytest NAME LIMIT ARGS...: pytest with a JUnit report; exit 5 (nothing collected) is a failure.
run_pytest() {
    local name=$1 limit=$2 rc
    shift 2
    rm -f "$OUT/$name.xml"
    timeout -k 30 "$limit" "$PY" -m pytest -q -rfE -p no:cacheprovider \
        --junitxml="$OUT/$name.xml" "$@"
    rc=$?
    count_junit "$OUT/$name.xml"
    if [ "$rc" -eq 5 ]; then
        STAGE_NOTE="pytest collected no tests although there are test files"
        return 1
    fi
    return "$rc"
}

# --- the stages ------------------------------------------------------------------------------------

sweep() { "$LABKIT" cleanup; }

unit() {
    compgen -G 'tests/unit/test_*.py' >/dev/null || { STAGE_NOTE="no tests/unit/test_*.py"; return 77; }
    run_pytest unit 900 tests/unit
}

integration() {
    compgen -G 'tests/integration/test_*.py' >/dev/null \
        || { STAGE_NOTE="no tests/integration/test_*.py"; return 77; }
    run_pytest integration 1500 tests/integration
}

notebooks() {
    compgen -G 'notebooks/*.ipynb' >/dev/null || { STAGE_NOTE="no notebooks yet"; return 77; }
    run_pytest notebooks 1800 --nbval-lax --nbval-sanitize-with tests/sanitize.cfg notebooks/
}

# Add the counts of pytest's closing line ("== 3 failed, 17 passed, 1 skipped in 9.1s ==") in a log.
count_pytest_log() {
    local line n word
    line=$(grep -E '^=+ .*[0-9]+ (passed|failed|error).* in [0-9.]+s' "$1" | tail -n 1)
    local p=0 f=0 s=0
    for n in $(grep -oE '[0-9]+ (passed|failed|errors?|skipped)' <<< "$line" | tr ' ' ':'); do
        word=${n#*:}
        case $word in
            passed) p=$((p + ${n%%:*})) ;;
            failed|error|errors) f=$((f + ${n%%:*})) ;;
            skipped) s=$((s + ${n%%:*})) ;;
        esac
    done
    PASSED=$((PASSED + p)) FAILED=$((FAILED + f)) SKIPPED=$((SKIPPED + s))
    STAGE_NOTE="$p passed, $f failed, $s skipped"
}

v2tier() {
    [ -f tests/v2tier/run.py ] || { STAGE_NOTE="tests/v2tier/run.py not written yet"; return 77; }
    timeout -k 30 1200 "$PY" tests/v2tier/run.py 2>&1 | tee "$OUT/v2tier.log"
    local rc=${PIPESTATUS[0]}
    count_pytest_log "$OUT/v2tier.log"     # it runs pytest inside the microVM
    return "$rc"
}

# Its pytest counts, plus the nbval cells both learner containers ran (their JUnit files).
classroom() {
    compgen -G 'tests/classroom/test_*.py' >/dev/null || { STAGE_NOTE="no tests/classroom/test_*.py"; return 77; }
    rm -f "$OUT"/classroom-*.xml "$OUT"/classroom-*.log
    TEST_OUTPUT=$OUT run_pytest classroom 1500 -s tests/classroom    # -s: the build's progress, live
    local rc=$? note=$STAGE_NOTE xml counts cells=0
    for xml in "$OUT"/classroom-labkit-*.xml; do
        [ -f "$xml" ] || continue
        counts=$("$PY" tests/junit_counts.py "$xml")
        read -r p f s <<< "$counts"
        PASSED=$((PASSED + p)) FAILED=$((FAILED + f)) SKIPPED=$((SKIPPED + s)) cells=$((cells + p))
    done
    STAGE_NOTE="$note; $cells nbval cells passed in the learners"
    return "$rc"
}

guest() {
    [ -f tests/guest/run.py ] || { STAGE_NOTE="tests/guest/run.py not written yet"; return 77; }
    # Opt-in for now: under TCG on 2 cores the whole guest tier takes longer than the rest of the suite
    # (README, "The guest tier"); `make test GUEST=1` includes it, `make test-guest` runs it alone.
    if [ "${GUEST:-0}" != 1 ]; then
        STAGE_NOTE="not in the default run (TCG: 40+ min); make test GUEST=1 or make test-guest"
        return 77
    fi
    timeout -k 30 2700 "$PY" tests/guest/run.py 2>&1 | tee "$OUT/guest.log"
    local rc=${PIPESTATUS[0]}
    count_pytest_log "$OUT/guest.log"     # pytest runs inside the guest; run.py sums its reports
    return "$rc"
}

provision_again() {
    local log=$OUT/provision-again.log
    bash vagrant/provision.sh --test-tools 2>&1 | tee "$log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
    if grep -q '^\[provision\] nothing changed$' "$log"; then
        STAGE_NOTE="second run: nothing changed"
        return 0
    fi
    STAGE_NOTE="second run changed something: $(grep '^\[provision\] changed:' "$log" | head -3 | tr '\n' ' ')"
    return 1
}

vagrant_validate() {
    command -v vagrant >/dev/null || { STAGE_NOTE="vagrant is not installed"; return 1; }
    HOME=${HOME:-/root} timeout -k 10 300 vagrant validate     # vagrant keeps its state in ~/.vagrant.d
}

shell_scripts() {
    local f
    for f in .ci/run vagrant/*.sh deploy/*.sh tests/*.sh tests/**/*.sh scripts/* benchmarks/*.sh; do
        [ -f "$f" ] && printf '%s\n' "$f"
    done | sort -u
}

shellcheck_all() {
    local files
    command -v shellcheck >/dev/null || { STAGE_NOTE="shellcheck is not installed"; return 1; }
    shopt -s globstar nullglob
    mapfile -t files < <(shell_scripts)
    shopt -u globstar nullglob
    echo "shellcheck ${files[*]}"
    STAGE_NOTE="${#files[@]} scripts"
    shellcheck -x "${files[@]}"
}

leaks() { "$LABKIT" cleanup --check; }

# Issue 10's published figures, from the integration stage's JUnit XML (no second run):
# faults injected, bad inputs tried, objects leaked -> test-output/reliability.md
# (docs/reliability.md is the committed copy: `python tests/reliability_report.py` regenerates it).
reliability() {
    [ -f "$OUT/integration.xml" ] || { STAGE_NOTE="no integration.xml: the integration stage did not run"; return 77; }
    local log=$OUT/reliability.log rc
    "$PY" tests/reliability_report.py --junit "$OUT/integration.xml" --out "$OUT/reliability.md" | tee "$log"
    rc=${PIPESTATUS[0]}
    STAGE_NOTE=$(tail -n 1 "$log" | sed 's/^wrote [^:]*: //')
    return "$rc"
}

# Everything runs from main(), called on the last line: bash has then read the whole file, so editing
# this script while a suite runs cannot derail the running one.
main() {
    SUITE_START=$(date +%s)
    stage sweep        120  "labkit cleanup: remove leftovers of earlier runs" -- sweep
    stage unit         900  "unit tests (tests/unit)" -- unit
    stage integration  1500 "root integration tests on the real kernel (tests/integration)" -- integration
    stage reliability  120  "reliability report: faults, bad inputs, leaks (tests/reliability_report.py)" -- reliability
    stage notebooks    1800 "nbval --nbval-lax over every notebook (notebooks/)" -- notebooks
    stage v2tier       1200 "the cgroup-v2 tier in a microVM (tests/v2tier/run.py)" -- v2tier
    stage classroom    1500 "classroom: the lab image, two learner containers at once, the hub (tests/classroom/)" -- classroom
    stage guest        2700 "the learner's platform: Debian 13 guest, systemd + cgroup v2 (tests/guest/run.py)" -- guest
    stage provision    900  "provisioning is idempotent (vagrant/provision.sh, second run)" -- provision_again
    stage vagrant      300  "vagrant validate (Vagrantfile)" -- vagrant_validate
    stage shellcheck   120  "shellcheck over every shell script" -- shellcheck_all
    stage leaks        120  "labkit cleanup --check: nothing left behind" -- leaks

    printf '\n%s\n' "======================================================================================"
    printf '%-13s %-6s %8s  %s\n' "stage" "result" "seconds" "note"
    local status=0 i
    for i in "${!NAMES[@]}"; do
        printf '%-13s %-6s %8s  %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}" "${NOTES[$i]}"
        [ "${RESULTS[$i]}" = FAIL ] && status=1
    done
    printf '%-13s %-6s %8s\n' "total" "$([ $status = 0 ] && echo PASS || echo FAIL)" "$(( $(date +%s) - SUITE_START ))"
    printf '%s\n' "======================================================================================"
    printf '%d passed, %d failed, %d skipped\n' "$PASSED" "$FAILED" "$SKIPPED"
    return "$status"
}

main "$@"
exit $?
