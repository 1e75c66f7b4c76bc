# Helpers for test/bench/run.sh (sourced).

die() { echo "bench: $*" >&2; exit 1; }
note() { echo "bench: $*" >&2; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

drop_caches() {
  sync
  if ! echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then
    note "cannot drop the page cache (not root?): timings are warm"
  fi
}

# measure NAME CMD...: runs CMD under GNU time; sets time_NAME (s) and rss_NAME (KiB)
measure() {
  local name=$1 tf
  shift
  tf=$(mktemp)
  if ! /usr/bin/time -f '%e %M' -o "$tf" "$@"; then
    cat "$tf" >&2; rm -f "$tf"; die "failed: $*"
  fi
  local t m
  read -r t m < <(tail -1 "$tf")
  rm -f "$tf"
  printf -v "time_$name" '%s' "$t"
  printf -v "rss_$name" '%s' "$m"
  note "    $t s, peak RSS $((m / 1024)) MiB"
}

# measure_pipeline NAME OUT LOG -- CMD1... -- CMD2...: CMD1 | CMD2 > OUT, CMD1's stderr to LOG.
# Wall time of the whole pipeline; peak RSS = the larger of the two sides.
measure_pipeline() {
  local name=$1 out=$2 log=$3
  shift 3
  [ "$1" = -- ] || die "measure_pipeline: expected --"
  shift
  local left=() right=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do left+=("$1"); shift; done
  [ $# -gt 0 ] || die "measure_pipeline: expected a second --"
  shift
  right=("$@")
  local t1 t2 start end
  t1=$(mktemp) t2=$(mktemp)
  start=$(date +%s.%N)
  if ! { /usr/bin/time -f '%e %M' -o "$t1" "${left[@]}" 2>"$log" | /usr/bin/time -f '%e %M' -o "$t2" "${right[@]}" > "$out"; }; then
    tail -5 "$log" >&2; rm -f "$t1" "$t2"; die "failed: ${left[*]} | ${right[*]}"
  fi
  end=$(date +%s.%N)
  local m1 m2
  m1=$(tail -1 "$t1" | awk '{ print $2 }') m2=$(tail -1 "$t2" | awk '{ print $2 }')
  rm -f "$t1" "$t2"
  printf -v "time_$name" '%s' "$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }')"
  printf -v "rss_$name" '%s' "$(( m1 > m2 ? m1 : m2 ))"
  local tv="time_$name" rv="rss_$name"
  note "    ${!tv} s, peak RSS $(( ${!rv} / 1024 )) MiB"
}

wait_for_node() {
  local i
  for i in $(seq 1 100); do [ -b "$1" ] && return 0; sleep 0.05; done
  die "$1 did not appear"
}

# row LABEL TIME BYTES RSS_KIB (empty values print as "-")
row() {
  local t=${2:--} s=- r=-
  [ -z "${3:-}" ] || s=$(mib "$3")
  [ -z "${4:-}" ] || r="$(( $4 / 1024 )) MiB"
  printf '%-58s %9s %12s %10s\n' "$1" "$t" "$s" "$r"
}

# ratio A B: A/B with 2 decimals, empty if either is missing
ratio() {
  [ -n "${1:-}" ] && [ -n "${2:-}" ] || { echo; return; }
  awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print ""; else printf "%.2f", a / b }'
}

# target LABEL VALUE OP LIMIT UNIT: prints PASS/FAIL (or n/a), counts failures in $fails
target() {
  local label=$1 value=$2 op=$3 limit=$4 unit=$5 verdict
  if [ -z "$value" ]; then
    printf '%-30s %10s   (target %s %s%s)  n/a\n' "$label" "-" "$op" "$limit" "$unit"
    return
  fi
  if awk -v v="$value" -v l="$limit" -v op="$op" 'BEGIN { exit !((op == ">=") ? v >= l : v <= l) }'; then
    verdict=PASS
  else
    verdict=FAIL; fails=$((fails + 1))
  fi
  printf '%-30s %10s   (target %s %s%s)  %s\n' "$label" "$value$unit" "$op" "$limit" "$unit" "$verdict"
}
