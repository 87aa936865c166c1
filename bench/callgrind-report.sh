# shellcheck shell=bash
# What the callgrind scripts (`callgrind-push.sh`, `callgrind-receipts.sh`, `callgrind-fanout.sh`)
# share: a dump's total instructions, and its costs per unit of work (a push, a delivery).

# The total instructions of dump $1. awk reads to the end: leaving early would end
# callgrind_annotate by SIGPIPE, and the calling script with it (pipefail).
callgrind_total() {
  callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(/,/, "", $1); t = $1} END {print t}'
}

# Prints the costs of dump $1 per unit, $2 units in all: inclusive (a function and what it
# calls, the first $4 rows) then exclusive (its own code, the first $5), leaving out what costs
# less than $3 instructions per unit. Headings end with $6.
callgrind_per_unit() {
  local dump=$1 units=$2 least=$3 inclusive=$4 exclusive=$5 heading=${6:-}
  per_unit() {
    awk -v n="$units" -v least="$least" '{ ir = $1; gsub(/,/, "", ir); if (ir !~ /^[0-9]+$/ || ir + 0 < least * n) next;
      name = $0; sub(/^ *[0-9,]+ +(\([^)]*\) +)?/, "", name); printf "%10.0f  %s\n", ir / n, substr(name, 1, 160) }'
  }
  echo "inclusive$heading:"
  callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | per_unit | head -"$inclusive" || true
  echo "exclusive$heading:"
  callgrind_annotate "$dump" 2>/dev/null | per_unit | head -"$exclusive" || true
}
