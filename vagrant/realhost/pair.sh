# Sourced by /init for phx.scenario=pair (tools initramfs only: needs nvme-cli and fio).
#
# What a default Linux host does with a hot-standby pair: discover from ADDR:PORT,
# follow referrals to the other discovery services, `nvme connect` every NVM subsystem
# entry (connect-all of Debian 12's nvme-cli is broken against this kernel), check the
# kernel built ONE multipath head over both paths, then run fio 4 KiB randrw QD8 with
# crc32c verify on the head for SECONDS_ while the host side kills targets.
#
# Markers (times are guest CLOCK_MONOTONIC ms, "up_ms"/"t_ms"; the host maps them onto
# its own clock through the arrival times of the markers):
#   discovered  one per discovery log entry (kind=current|referral|nvm)
#   connected   one per `nvme connect`
#   multipath   subsystems, heads and paths the kernel made
#   path        per path: controller, state, ana_state, port, cntlid
#   io-start    fio is about to start
#   paths       whenever any path's state/ana_state changes: live=N of=M nvmeX=state/ana/port
#   io          once a second: completed reads/writes and in-flight I/O (all paths)
#   slowio      every I/O whose completion latency was >= phx.slow_ms (default 30)
#   gap         every interval >= phx.slow_ms in which no I/O completed
#   second      per second of the run: I/Os completed and the worst latency among them
#   fio         rc, err, verify failures, I/O count, worst latency

export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
PAIR_SLOW_MS=$(arg slow_ms); [ -n "$PAIR_SLOW_MS" ] || PAIR_SLOW_MS=30
# After this many recoveries (a path lost, then both live again) plus 3 s, fio is stopped
# early: phx.seconds is only the upper bound of the run.
PAIR_KILLS=$(arg kills); [ -n "$PAIR_KILLS" ] || PAIR_KILLS=0

up_ms() { read -r up _ < /proc/uptime; T=$(( ${up%.*} * 1000 + 10 * 1${up#*.} - 1000 )); }

cli_opts() {  # kernel option names (reconnect_delay=1,hdr_digest) -> nvme-cli flags
    echo "$OPTS" | tr ',' '\n' | while IFS='=' read -r k v; do
        [ -n "$k" ] || continue
        f=--$(echo "$k" | tr _ -)
        if [ -n "$v" ]; then echo "$f=$v"; else echo "$f"; fi
    done
}

discover_one() {  # $1 addr $2 port: "kind traddr trsvcid subnqn" per log entry
    nvme discover -t tcp -a "$1" -s "$2" 2>/tmp/disc.err | awk '
        function out() { if (n) print k, a, s, q }
        /^=====Discovery Log Entry/ { out(); n = 1; k = ""; a = ""; s = ""; q = "" }
        /^subtype:/ { k = ($0 ~ /current/) ? "current" : ($0 ~ /discovery/) ? "referral" : "nvm" }
        /^traddr:/ { a = $2 }
        /^trsvcid:/ { s = $2 }
        /^subnqn:/ { q = $2 }
        END { out() }'
}

pair_discover() {  # breadth first over discovery services; NVM entries into /tmp/nvm
    todo="$ADDR:$PORT"; seen=""; : > /tmp/nvm
    while [ -n "$todo" ]; do
        set -- $todo; cur=$1; shift; todo="$*"
        case " $seen " in *" $cur "*) continue ;; esac
        seen="$seen $cur"
        discover_one "${cur%:*}" "${cur##*:}" > /tmp/disc
        [ -s /tmp/disc ] || say error what=discover at="$cur" msg="$(head -c 160 /tmp/disc.err | tr ' \n' '__')"
        while read -r kind a s q; do
            say discovered via="$cur" kind="$kind" traddr="$a" trsvcid="$s" subnqn="$q"
            case "$kind" in
                referral) todo="$todo $a:$s" ;;
                nvm) grep -qx "$a $s $q" /tmp/nvm || echo "$a $s $q" >> /tmp/nvm ;;
            esac
        done < /tmp/disc
    done
}

pair_connect() {
    while read -r a s q; do
        if out=$(nvme connect -t tcp -a "$a" -s "$s" -n "$q" $(cli_opts) 2>&1); then
            say connected traddr="$a" trsvcid="$s" subnqn="$q" out="$(echo $out | tr ' ' '_')"
        else
            say error what=connect traddr="$a" trsvcid="$s" msg="$(echo $out | tr ' ' '_')"
        fi
    done < /tmp/nvm
}

paths_of() {  # $1 = head nvmeSnN: its paths' sysfs dirs (nvmeScCnN under each controller)
    set -- /sys/class/nvme/nvme*/"${1%n*}"c*n"${1##*n}"
    [ -e "$1" ] && echo "$@"
}

head_dev() {  # the first multipath head with 2 or more paths (bounded wait, 20 s)
    i=0
    while [ $i -lt 100 ]; do
        for h in /sys/class/nvme-subsystem/nvme-subsys*/nvme*n*; do
            [ -e "$h" ] || continue
            set -- $(paths_of "${h##*/}")
            [ $# -ge 2 ] && { echo "${h##*/}"; return 0; }
        done
        i=$((i + 1)); sleep 0.2
    done
    return 1
}

report_multipath() {
    subs=0; heads=""; for s in /sys/class/nvme-subsystem/nvme-subsys*; do
        [ -e "$s" ] || continue
        subs=$((subs + 1))
        for e in "$s"/nvme*; do case ${e##*/} in nvme*n*) heads="$heads,${e##*/}" ;; esac; done
        read -r pol < "$s/iopolicy"
    done
    set -- $PATHS
    say multipath subsystems=$subs heads="${heads#,}" head="$HEAD" paths=$# iopolicy="$pol"
}

path_ctrl() { x=${1%/*}; C=${x##*/}; }   # /sys/class/nvme/nvme1/nvme0c1n1 -> C=nvme1

report_paths() {
    for p in $PATHS; do
        n=${p##*/}; path_ctrl "$p"
        read -r st < /sys/class/nvme/$C/state; read -r ana < "$p/ana_state"
        read -r cntlid < /sys/class/nvme/$C/cntlid; read -r ad < /sys/class/nvme/$C/address
        port=${ad#*trsvcid=}; port=${port%%,*}
        say path path="$n" ctrl="$C" state="$st" ana_state="$ana" trsvcid="$port" cntlid="$cntlid"
    done
}

monitor() {  # path changes at once, I/O counters once a second, until /tmp/stop exists;
    # $1 = fio's pid, interrupted 3 s after the PAIR_KILLS-th recovery
    last=""; tick=0; degraded=0; recovered=0; stop_at=-1
    while [ ! -e /tmp/stop ]; do
        st=""; live=0; n=0
        for p in $PATHS; do
            path_ctrl "$p"; n=$((n + 1))
            read -r cs < /sys/class/nvme/$C/state; read -r ana < "$p/ana_state"
            read -r ad < /sys/class/nvme/$C/address; port=${ad#*trsvcid=}; port=${port%%,*}
            st="$st $C=$cs/$ana/$port"
            [ "$cs" = live ] && live=$((live + 1))
        done
        up_ms
        [ "$st" != "$last" ] && { say paths up_ms=$T live=$live of=$n$st; last=$st; }
        if [ $live -lt $n ]; then degraded=1
        elif [ $degraded = 1 ]; then
            degraded=0; recovered=$((recovered + 1))
            [ $recovered = "$PAIR_KILLS" ] && stop_at=$((tick + 15))
        fi
        [ $tick = $stop_at ] && { say stopping recovered=$recovered; touch /tmp/stopped; kill -INT "$1"; }
        if [ $((tick % 5)) -eq 0 ]; then   # the head keeps no I/O statistics: its paths do
            rs=0; ws=0; fl=0
            for p in $PATHS; do
                read -r r _ _ _ w _ _ _ inflight _ < "$p/stat"
                rs=$((rs + r)); ws=$((ws + w)); fl=$((fl + inflight))
            done
            say io up_ms=$T reads=$rs writes=$ws inflight=$fl
        fi
        tick=$((tick + 1)); sleep 0.2
    done
}

latency_report() {  # $1 = fio's per-I/O latency log (time ms, latency ns, ddir, ...)
    awk -F', *' -v slow="$PAIR_SLOW_MS" '
        { t = $1 + 0; us = int($2 / 1000); n++
          if (us > worst) worst = us
          s = int(t / 1000); if (!(s in cnt)) { cnt[s] = 0; mx[s] = 0 }
          if (n == 1 || s < first) first = s; if (s > lastsec) lastsec = s
          cnt[s]++; if (us > mx[s]) mx[s] = us
          if (us >= slow * 1000) printf "@@PHX slowio t_ms=%d lat_us=%d ddir=%s\n", t, us, $3
          if (n > 1 && t - prev >= slow) printf "@@PHX gap t_ms=%d ms=%d\n", t, t - prev
          prev = t }
        END { for (s = first; s <= lastsec; s++)
                  printf "@@PHX second t_s=%d ios=%d max_us=%d\n", s, cnt[s] + 0, mx[s] + 0
              printf "@@PHX latency ios=%d worst_us=%d\n", n, worst }' "$1"
}

pair_scenario() {
    mkdir -p /etc/nvme
    [ -n "$HOSTNQN" ] || HOSTNQN=nqn.2014-08.org.nvmexpress:uuid:7068782d-7061-6972-2d68-6f7374000001
    echo "$HOSTNQN" > /etc/nvme/hostnqn
    case "$HOSTNQN" in *:uuid:*) echo "${HOSTNQN##*:uuid:}" > /etc/nvme/hostid ;; esac
    nvme version >/dev/null 2>&1 || { say error what=nvme-cli msg="$(nvme version 2>&1 | head -c 160 | tr ' \n' '__')"; return; }
    pair_discover
    pair_connect
    HEAD=$(head_dev) || { say error what=no-multipath-head; return; }
    PATHS=$(paths_of "$HEAD")
    report_multipath
    report_paths
    up_ms; say io-start up_ms=$T head="$HEAD" seconds="$SECONDS_"
    fio --name=pair --filename=/dev/$HEAD --ioengine=libaio --direct=1 --rw=randrw --bs=4k \
        --iodepth=8 --time_based --runtime="$SECONDS_" --verify=crc32c --verify_fatal=1 \
        --verify_backlog=256 --write_lat_log=/tmp/pair --log_avg_msec=0 \
        --log_alternate_epoch=1 --log_alternate_epoch_clock_id=1 \
        --output=/tmp/fio.out > /tmp/fio.err 2>&1 &
    fio=$!
    monitor $fio &
    mon=$!
    wait $fio
    rc=$?
    # fio exits 128 when a signal ended it: here that is the monitor's planned stop
    stopped=0; [ -e /tmp/stopped ] && stopped=1 && [ $rc = 128 ] && rc=0
    up_ms; say io-end up_ms=$T rc=$rc stopped=$stopped
    touch /tmp/stop; wait $mon
    err=$(sed -n 's/.*err= *\([0-9]*\).*/\1/p' /tmp/fio.out | head -n 1)
    vf=$(cat /tmp/fio.out /tmp/fio.err | grep -ciE 'verify fail|bad magic|bad header|verify type mismatch|crc32c.*(fail|mismatch)')
    grep -iE 'verify|error|err=' /tmp/fio.out /tmp/fio.err | head -n 20 | while read -r l; do say fio-line "$l"; done
    latency_report /tmp/pair_lat.1.log
    say fio rc=$rc err="${err:-none}" verify_failures=$vf stopped=$stopped
    report_paths
    for c in /sys/class/nvme/nvme*; do echo 1 > "$c/delete_controller"; done 2>/dev/null
    say disconnected
}
