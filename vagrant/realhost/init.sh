#!/bin/busybox sh
# Guest init for the real-Linux-host harness. Reads its scenario from the kernel command
# line (phx.*), reports through "@@PHX <event> key=value ..." lines on the serial console,
# and powers off. Scenarios:
#   host    discover, connect to phx.nqn at 10.0.2.2:phx.port, report identity, verify a
#           written pattern, run a verified workload for phx.seconds, disconnect
#   nvmet   run the kernel's own NVMe/TCP target on port 4420 (a reference peer) for
#           phx.seconds
#   loop    nvmet plus the host scenario against it inside the guest (harness self-test)
#   pair    a hot-standby pair found through discovery at phx.addr:phx.port, verified fio
#           on its multipath head for phx.seconds (pair.sh; tools initramfs only)
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp && mount -t tmpfs tmpfs /tmp

arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^phx\.$1=//p" | tail -n 1; }
say() { echo "@@PHX $*"; }
now_ms() { read up _ < /proc/uptime; echo $(( ${up%.*} * 1000 + 10 * 1${up#*.} - 1000 )); }

SCENARIO=$(arg scenario); PORT=$(arg port); NQN=$(arg nqn); HOSTNQN=$(arg hostnqn)
OPTS=$(arg opts); SECONDS_=$(arg seconds); ADDR=$(arg addr)
[ -n "$ADDR" ] || ADDR=10.0.2.2
[ -n "$SECONDS_" ] || SECONDS_=5

for m in /mods/*.ko; do
    case "$m" in *-brd.ko) continue ;; esac
    insmod "$m" 2>/dev/null || say modfail name="${m##*/}"
done
mount -t configfs configfs /sys/kernel/config 2>/dev/null   # configfs is a module here
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
say booted kernel="$(uname -r)" uptime_ms="$(now_ms)"

finish() {
    dmesg | grep -iE 'nvme' | while read -r line; do say kmsg "$line"; done
    say done
    poweroff -f
}

start_nvmet() {
    insmod /mods/*-brd.ko rd_nr=1 rd_size=65536 || say error what=brd
    S=/sys/kernel/config/nvmet/subsystems/$NQN
    mkdir -p "$S/namespaces/1" && echo 1 > "$S/attr_allow_any_host"
    echo -n /dev/ram0 > "$S/namespaces/1/device_path" && echo 1 > "$S/namespaces/1/enable"
    P=/sys/kernel/config/nvmet/ports/1
    mkdir -p $P && echo tcp > $P/addr_trtype && echo ipv4 > $P/addr_adrfam
    echo 0.0.0.0 > $P/addr_traddr && echo 4420 > $P/addr_trsvcid
    ln -s "$S" "$P/subsystems/$NQN" && say nvmet-ready port=4420 nqn="$NQN"
}

connect() {  # $1 = subsystem NQN; prints the controller name (nvmeN)
    spec="transport=tcp,traddr=$ADDR,trsvcid=$PORT,nqn=$1"
    [ -n "$HOSTNQN" ] && spec="$spec,hostnqn=$HOSTNQN"
    [ -n "$OPTS" ] && spec="$spec,$OPTS"
    exec 3<>/dev/nvme-fabrics || return 1
    echo "$spec" >&3 || { exec 3>&-; return 1; }
    read -r reply <&3; exec 3>&-
    inst=$(echo "$reply" | sed -n 's/.*instance=\([0-9]*\).*/\1/p')
    echo "nvme$inst"
}

report_identity() {  # $1 = controller name
    c=/sys/class/nvme/$1
    say identity ctrl="$1" serial="$(cat $c/serial | tr -d ' ')" model="$(cat $c/model | sed 's/ *$//; s/ /_/g')" \
        subsysnqn="$(cat $c/subsysnqn)" cntlid="$(cat $c/cntlid)" fw="$(cat $c/firmware_rev | tr -d ' ')"
    for b in /sys/block/nvme*n*; do
        [ -e "$b" ] || continue
        say namespace dev="${b##*/}" nsid="$(cat $b/nsid 2>/dev/null)" uuid="$(cat $b/uuid 2>/dev/null)" \
            nguid="$(cat $b/nguid 2>/dev/null)" blocks="$(cat $b/size)"
    done
}

wait_dev() {
    i=0
    while [ $i -lt 100 ]; do
        for d in /dev/nvme*n1; do [ -b "$d" ] && { echo "$d"; return 0; }; done
        i=$((i + 1)); sleep 0.1
    done
    return 1
}

pattern_check() {  # $1 = device
    dd if=/dev/urandom of=/tmp/pat bs=4096 count=64 2>/dev/null
    dd if=/tmp/pat of="$1" bs=4096 count=64 oflag=direct conv=notrunc 2>/dev/null || say error what=pattern-write
    dd if="$1" of=/tmp/back bs=4096 count=64 iflag=direct 2>/dev/null || say error what=pattern-read
    a=$(md5sum < /tmp/pat); b=$(md5sum < /tmp/back)
    [ "$a" = "$b" ] && say pattern ok=1 md5="${a%% *}" || say pattern ok=0
}

workload() {  # $1 = device: write, read back, compare; errors and longest gap
    ops=0; errs=0; mism=0; start=$(now_ms); last=$start; maxgap=0
    end=$((start + SECONDS_ * 1000))
    while [ "$(now_ms)" -lt $end ]; do
        blk=$(( (ops * 8) % 4096 ))
        dd if=/dev/urandom of=/tmp/w bs=4096 count=8 2>/dev/null
        dd if=/tmp/w of="$1" bs=4096 seek=$blk count=8 oflag=direct conv=notrunc 2>/dev/null || { errs=$((errs+1)); say ioerror op=write blk=$blk; }
        dd if="$1" of=/tmp/r bs=4096 skip=$blk count=8 iflag=direct 2>/dev/null || { errs=$((errs+1)); say ioerror op=read blk=$blk; }
        [ "$(md5sum < /tmp/w)" = "$(md5sum < /tmp/r)" ] || { mism=$((mism+1)); say mismatch blk=$blk; }
        t=$(now_ms); gap=$((t - last)); last=$t
        [ $gap -gt $maxgap ] && maxgap=$gap
        ops=$((ops + 1))
        [ $((ops % 5)) -eq 0 ] && say progress ops=$ops errors=$errs
    done
    say workload ops=$ops errors=$errs mismatches=$mism max_gap_ms=$maxgap
}

host_scenario() {
    d=$(connect nqn.2014-08.org.nvmexpress.discovery) && [ -n "$d" ] && {
        say discovery ctrl="$d" subsysnqn="$(cat /sys/class/nvme/$d/subsysnqn)"
        echo 1 > /sys/class/nvme/$d/delete_controller
    } || say error what=discovery
    ctrl=$(connect "$NQN")
    [ -n "$ctrl" ] || { say error what=connect; return; }
    say connected ctrl="$ctrl"
    dev=$(wait_dev) || { say error what=no-namespace; return; }
    report_identity "$ctrl"
    pattern_check "$dev"
    workload "$dev"
    echo 1 > /sys/class/nvme/$ctrl/delete_controller && say disconnected ctrl="$ctrl"
}

case "$SCENARIO" in
    host) host_scenario ;;
    nvmet) start_nvmet; sleep "$SECONDS_" ;;
    loop) start_nvmet; ADDR=127.0.0.1; PORT=4420; host_scenario ;;
    pair) if [ -e /pair.sh ]; then . /pair.sh; pair_scenario; else say error what=no-tools; fi ;;
    *) say error what=unknown-scenario name="$SCENARIO" ;;
esac
finish
