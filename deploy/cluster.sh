#!/usr/bin/env bash
# A local 3-node Sluice cluster on loopback, for trying replication and
# failover on one machine. Builds nothing: it runs target/release/sluice
# (build it with `cargo build --release -p sluice`) or the binary in $SLUICE.
#
#   deploy/cluster.sh start [DIR]    # start nodes 1..3, data and logs under DIR
#   deploy/cluster.sh status [DIR]   # which nodes run, and their ports
#   deploy/cluster.sh stop [DIR]     # SIGTERM every node, wait for each to exit
#
# DIR defaults to ./sluice-cluster. Node N (1..3) gets:
#   Kafka    127.0.0.1:909(1+N)   (9092, 9093, 9094)
#   cluster  127.0.0.1:1909(1+N)  (19092, 19093, 19094; Raft between nodes)
#   admin    127.0.0.1:964(3+N)   (9644, 9645, 9646; /healthz, /metrics)
#   data     DIR/node-N/data, log DIR/node-N/sluice.log, pid DIR/node-N/pid
#
# Environment: SLUICE (binary), SHARDS (per node, default 1), MEMORY (per
# node, default 512MiB), MIN_INSYNC (min.insync.replicas default, 2), and
# EXTRA_ARGS (more `sluice start` flags for every node).
set -euo pipefail

NODES=3
cmd=${1:-}
dir=${2:-./sluice-cluster}
here=$(cd "$(dirname "$0")" && pwd)
bin=${SLUICE:-$here/../target/release/sluice}
shards=${SHARDS:-1}
memory=${MEMORY:-512MiB}
min_insync=${MIN_INSYNC:-2}

kafka_port() { echo $((9091 + $1)); }
cluster_port() { echo $((19091 + $1)); }
admin_port() { echo $((9643 + $1)); }

voters() {
    local n out=""
    for n in $(seq 1 $NODES); do
        out="${out:+$out,}$n@127.0.0.1:$(cluster_port "$n")"
    done
    echo "$out"
}

# The pid of node $1 when it runs.
running_pid() {
    local f="$dir/node-$1/pid" pid
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Live brokers node $1 knows of, from its /metrics (0 when it cannot tell).
live_brokers() {
    local n
    n=$( (exec 3<>"/dev/tcp/127.0.0.1/$(admin_port "$1")" &&
        printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3 &&
        grep -a '^sluice_cluster_brokers{state="live"}' <&3) 2>/dev/null |
        awk '{print $2}')
    echo "${n:-0}"
}

start() {
    if [ ! -x "$bin" ]; then
        echo "no sluice binary at $bin: run 'cargo build --release -p sluice' or set SLUICE" >&2
        exit 1
    fi
    local n v
    v=$(voters)
    for n in $(seq 1 $NODES); do
        if pid=$(running_pid "$n"); then
            echo "node $n runs already (pid $pid)" >&2
            exit 1
        fi
    done
    for n in $(seq 1 $NODES); do
        mkdir -p "$dir/node-$n/data"
        # shellcheck disable=SC2086 # EXTRA_ARGS is a list of flags
        nohup "$bin" start \
            --node-id "$n" \
            --data-dir "$dir/node-$n/data" \
            --listen "127.0.0.1:$(kafka_port "$n")" \
            --admin-listen "127.0.0.1:$(admin_port "$n")" \
            --cluster-listen "127.0.0.1:$(cluster_port "$n")" \
            --cluster-voters "$v" \
            --min-insync-replicas "$min_insync" \
            --shards "$shards" \
            --memory "$memory" \
            ${EXTRA_ARGS:-} \
            >>"$dir/node-$n/sluice.log" 2>&1 </dev/null &
        echo $! >"$dir/node-$n/pid"
    done
    # Bounded wait: every node listening, or the first one that died.
    local deadline=$((SECONDS + 60)) ready
    while :; do
        ready=0
        for n in $(seq 1 $NODES); do
            if ! running_pid "$n" >/dev/null; then
                echo "node $n exited; last lines of $dir/node-$n/sluice.log:" >&2
                tail -n 20 "$dir/node-$n/sluice.log" >&2
                stop
                exit 1
            fi
            # Ready: listening, and every broker registered (a topic
            # auto-created before that would be refused its 3 replicas).
            port_open "$(kafka_port "$n")" && [ "$(live_brokers "$n")" -eq "$NODES" ] &&
                ready=$((ready + 1))
        done
        [ "$ready" -eq "$NODES" ] && break
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "the nodes did not all listen within 60 s; see $dir/node-*/sluice.log" >&2
            exit 1
        fi
        sleep 0.2
    done
    local boot
    boot="127.0.0.1:$(kafka_port 1),127.0.0.1:$(kafka_port 2),127.0.0.1:$(kafka_port 3)"
    cat <<EOF
A $NODES-node cluster runs (data and logs under $dir).
  bootstrap.servers=$boot
  kcat -L -b $boot                                      # brokers, leaders, replicas, ISR
  echo hello | kcat -P -b $boot -t demo -X acks=all     # auto-created with 3 replicas
  kcat -C -b $boot -t demo -o beginning -e
  curl -s 127.0.0.1:$(admin_port 1)/healthz                             # admin of node 1 ($(admin_port 2), $(admin_port 3) for 2, 3)
Kill one (kill -9 \$(cat $dir/node-2/pid)) and the others keep serving;
'$0 stop $dir' stops them all.
EOF
}

status() {
    local n pid
    for n in $(seq 1 $NODES); do
        if pid=$(running_pid "$n"); then
            echo "node $n: running (pid $pid), kafka 127.0.0.1:$(kafka_port "$n"), cluster 127.0.0.1:$(cluster_port "$n"), admin 127.0.0.1:$(admin_port "$n")"
        else
            echo "node $n: stopped"
        fi
    done
}

stop() {
    local n pid deadline
    for n in $(seq 1 $NODES); do
        pid=$(running_pid "$n") || continue
        kill -TERM "$pid"
    done
    for n in $(seq 1 $NODES); do
        pid=$(running_pid "$n") || { rm -f "$dir/node-$n/pid"; continue; }
        deadline=$((SECONDS + 30))
        while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "node $n (pid $pid) did not stop within 30 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$dir/node-$n/pid"
        echo "node $n stopped"
    done
}

case "$cmd" in
start) start ;;
stop) stop ;;
status) status ;;
*)
    echo "usage: $0 start|status|stop [DIR]   (DIR defaults to ./sluice-cluster)" >&2
    exit 2
    ;;
esac
