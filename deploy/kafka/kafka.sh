#!/usr/bin/env bash
# Single-node Apache Kafka 4.x (KRaft, one combined broker+controller) for tests, CI and local
# development. The jars come from Maven Central through deploy/kafka/pom.xml, cached in the
# Maven local repository (~/.m2): apache.org downloads are not needed.
#
# Usage:
#   deploy/kafka/kafka.sh fetch                    resolve the jars (no-op when cached)
#   deploy/kafka/kafka.sh start [--port N] [--dir DIR] [--owner-pid PID]
#                                                  format DIR if new, start the broker in the
#                                                  background, print 127.0.0.1:PORT last
#   deploy/kafka/kafka.sh status [--dir DIR]       exit 0 and print the address when running
#   deploy/kafka/kafka.sh stop [--dir DIR]         SIGTERM, then SIGKILL; no-op when stopped
#
# Local development:
#   export KAFKA_BOOTSTRAP_SERVERS="$(deploy/kafka/kafka.sh start)"
#   pytest tests/integration     # the fixtures use the running broker instead of their own
#   deploy/kafka/kafka.sh stop
#
# `start` on a DIR that already holds a formatted broker restarts that same broker: same data,
# same ports (tests use stop + start to simulate an outage); `rm -rf DIR` for a fresh cluster.
# --owner-pid: stop the broker when that process dies, so a killed test run leaves no JVM.
#
# Environment:
#   KAFKA_DIR            default DIR (default: $PWD/.kafka)
#   KAFKA_M2_REPO        Maven local repository (default: Maven's own, ~/.m2/repository)
#   KAFKA_HEAP_OPTS      JVM heap (default: -Xms256m -Xmx512m)
#   KAFKA_START_TIMEOUT  seconds to wait for the broker to serve requests (default: 90)
#   KAFKA_STOP_TIMEOUT   seconds between SIGTERM and SIGKILL (default: 30)
#   JAVA_HOME            Java 17+ to run the broker with (default: java on PATH)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT="$HERE/$(basename "${BASH_SOURCE[0]}")"
POM="$HERE/pom.xml"
readonly HERE SCRIPT POM
# Printed by kafka.server.KafkaRaftServer once the broker is unfenced and serving requests.
readonly READY_MARKER="Kafka Server started"

log() { echo "kafka.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

java_bin() {
    if [[ -n "${JAVA_HOME:-}" ]]; then echo "$JAVA_HOME/bin/java"; else echo java; fi
}

check_java() {
    local version major
    version="$("$(java_bin)" -version 2>&1 | head -n 1)" || die "java not found: Kafka 4 needs Java 17+"
    major="$(sed -n 's/.*version "\([0-9]*\).*/\1/p' <<<"$version")"
    ((${major:-0} >= 17)) || die "Kafka 4 needs Java 17+, found: $version"
}

# The classpath file sits next to the jars it lists (so a cached ~/.m2 caches both) and is
# keyed by the pom's checksum, so editing the pom resolves again.
classpath_file() {
    local repo="${KAFKA_M2_REPO:-$HOME/.m2/repository}" sum
    sum="$(cksum <"$POM" | cut -d' ' -f1)"
    echo "$repo/.kafka-sh/classpath-$sum.txt"
}

classpath_is_cached() {
    local file="$1" jar jars
    [[ -s "$file" ]] || return 1
    # The file has no final newline, which makes read return 1 after reading it all.
    IFS=: read -r -a jars <"$file" || true
    for jar in "${jars[@]}"; do
        [[ -f "$jar" ]] || return 1
    done
}

cmd_fetch() {
    local file tmp
    file="$(classpath_file)"
    if classpath_is_cached "$file"; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found: Maven 3.6.3+ is needed to fetch the Kafka jars"
    log "resolving the Kafka jars with Maven (first run only)"
    mkdir -p "$(dirname "$file")"
    # Per-process names: concurrent fetches (parallel test workers) must not mix their files.
    tmp="$file.$$"
    local -a mvn_args=(-B -q -f "$POM" dependency:build-classpath "-Dmdep.outputFile=$tmp.txt")
    if [[ -n "${KAFKA_M2_REPO:-}" ]]; then
        mvn_args+=("-Dmaven.repo.local=$KAFKA_M2_REPO")
    fi
    # Maven's output is only worth showing when it fails (and stdout belongs to the address).
    if ! mvn "${mvn_args[@]}" >"$tmp.log" 2>&1; then
        cat "$tmp.log" >&2
        rm -f "$tmp.log"
        die "Maven could not resolve $POM"
    fi
    rm -f "$tmp.log"
    mv "$tmp.txt" "$file"
    classpath_is_cached "$file" || die "Maven wrote $file but some of its jars are missing"
}

# pid of the broker of $dir, or nothing; checks the command line so a stale pid file whose
# pid was reused by another process is not mistaken for the broker.
broker_pid() {
    local dir="$1" pid cmdline
    [[ -f "$dir/kafka.pid" ]] || return 0
    pid="$(<"$dir/kafka.pid")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 0
    if [[ -r "/proc/$pid/cmdline" ]]; then
        cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
    else
        cmdline="$(ps -p "$pid" -o args= 2>/dev/null || true)"
    fi
    if [[ "$cmdline" == *"$dir/server.properties"* ]]; then echo "$pid"; fi
}

# The client port of the broker formatted in $1.
broker_port() {
    sed -n 's/^advertised\.listeners=PLAINTEXT:\/\/127\.0\.0\.1://p' "$1/server.properties"
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A port nobody listens on, below Linux's ephemeral range (32768+) so that outgoing client
# connections cannot be holding it when the broker binds.
free_port() {
    local port tries=50
    while ((tries--)); do
        port=$((20000 + RANDOM % 12000))
        if ! port_in_use "$port"; then echo "$port"; return 0; fi
    done
    die "no free port found on 127.0.0.1"
}

# Random cluster id in Kafka's Uuid format (22 chars of url-safe base64), generated here rather
# than with `kafka-storage random-uuid` to save a JVM start. Kafka refuses ids starting with
# '-' because they read as command-line options.
cluster_id() {
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        if [[ "$id" != -* ]]; then echo "$id"; return 0; fi
    done
}

write_config() {
    local dir="$1" port="$2" controller_port="$3"
    cat >"$dir/server.properties" <<EOF
# Written by deploy/kafka/kafka.sh: one combined broker+controller on loopback, for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$dir/data

# One node: every internal topic has a single replica.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Internal topics are created on first use (first group, first transaction): one partition
# each instead of 50 keeps that first use fast on a small machine.
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1

# Tests should not wait 3 s for a consumer group's first rebalance.
group.initial.rebalance.delay.ms=0
# The daemon creates its topics; a typo must fail instead of creating a topic.
auto.create.topics.enable=false
num.partitions=1
EOF
    cat >"$dir/log4j2.properties" <<'EOF'
# Everything goes to stdout, which kafka.sh redirects to kafka.log with the JVM's own output.
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
# One line per request at INFO or above would drown the rest.
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

format_storage() {
    local dir="$1" classpath="$2"
    mkdir -p "$dir/data"
    "$(java_bin)" -cp "$classpath" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
        kafka.tools.StorageTool format --cluster-id "$(cluster_id)" \
        --config "$dir/server.properties" >>"$dir/kafka.log" 2>&1 ||
        die "formatting $dir/data failed; see $dir/kafka.log"
}

# Stops the broker when $owner exits; detached from the caller's stdio so that a caller
# capturing this script's output is not kept waiting for it.
watch_owner() {
    local owner="$1" pid="$2" dir="$3"
    while kill -0 "$owner" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do
        sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "owner process $owner is gone: stopping the broker"
        "$SCRIPT" stop --dir "$dir"
    fi
}

wait_ready() {
    local dir="$1" pid="$2" port="$3" log_offset="$4"
    local timeout="${KAFKA_START_TIMEOUT:-90}" start=$SECONDS
    while ((SECONDS - start < timeout)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "the broker exited during startup; last lines of $dir/kafka.log:"
            tail -n 40 "$dir/kafka.log" >&2
            return 1
        fi
        # Only this start's part of the log: a restart appends to the previous run's log.
        if tail -c "+$((log_offset + 1))" "$dir/kafka.log" | grep -qF "$READY_MARKER" &&
            port_in_use "$port"; then
            return 0
        fi
        sleep 0.2
    done
    log "the broker did not start within ${timeout}s; last lines of $dir/kafka.log:"
    tail -n 40 "$dir/kafka.log" >&2
    "$SCRIPT" stop --dir "$dir" >&2
    return 1
}

cmd_start() {
    local dir="$1" port="$2" owner="$3" pid controller_port classpath log_offset
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    local formatted=""
    if [[ -f "$dir/data/meta.properties" ]]; then
        # Restart of the same broker: keep its ports, clients and the quorum know them.
        formatted="$(broker_port "$dir")"
        if [[ -n "$port" && "$port" != "$formatted" ]]; then
            die "$dir was formatted for port $formatted, not $port; rm -rf it for a new broker"
        fi
        port="$formatted"
    fi
    pid="$(broker_pid "$dir")"
    if [[ -n "$pid" ]]; then
        log "already running (pid $pid)"
        echo "127.0.0.1:$port"
        return 0
    fi

    # Checked before formatting: a DIR formatted for a taken port could never start.
    port="${port:-$(free_port)}"
    if port_in_use "$port"; then
        die "port $port on 127.0.0.1 is already taken by another process"
    fi
    cmd_fetch
    classpath="$(<"$(classpath_file)")"
    check_java
    if [[ -z "$formatted" ]]; then
        controller_port="$(free_port)"
        while [[ "$controller_port" == "$port" ]]; do controller_port="$(free_port)"; done
        write_config "$dir" "$port" "$controller_port"
        format_storage "$dir" "$classpath"
    fi

    touch "$dir/kafka.log"
    log_offset="$(wc -c <"$dir/kafka.log" | tr -d ' ')"
    # Background jobs of a script ignore SIGINT and nohup adds SIGHUP: a Ctrl-C in the
    # terminal of a test run leaves the broker to its fixture's teardown.
    # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS holds several options
    nohup "$(java_bin)" ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$dir/log4j2.properties" \
        -cp "$classpath" kafka.Kafka "$dir/server.properties" \
        >>"$dir/kafka.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/kafka.pid"
    if [[ -n "$owner" ]]; then
        watch_owner "$owner" "$pid" "$dir" </dev/null >>"$dir/kafka.log" 2>&1 &
    fi

    log "starting the broker (pid $pid, log $dir/kafka.log)"
    wait_ready "$dir" "$pid" "$port" "$log_offset" || exit 1
    log "ready after ${SECONDS}s"
    echo "127.0.0.1:$port"
}

cmd_stop() {
    local dir="$1" pid waited=0
    [[ -d "$dir" ]] || return 0
    dir="$(cd "$dir" && pwd)"
    pid="$(broker_pid "$dir")"
    if [[ -z "$pid" ]]; then
        rm -f "$dir/kafka.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && ((waited < ${KAFKA_STOP_TIMEOUT:-30} * 10)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "no exit $((waited / 10))s after SIGTERM: sending SIGKILL to $pid"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$dir/kafka.pid"
    log "stopped (pid $pid)"
}

cmd_status() {
    local dir="$1" pid
    [[ -d "$dir" ]] || { echo "stopped"; return 1; }
    dir="$(cd "$dir" && pwd)"
    pid="$(broker_pid "$dir")"
    if [[ -z "$pid" ]]; then
        echo "stopped"
        return 1
    fi
    echo "running pid=$pid bootstrap=127.0.0.1:$(broker_port "$dir")"
}

main() {
    local command="${1:-}" dir="${KAFKA_DIR:-$PWD/.kafka}" port="" owner=""
    (($#)) && shift
    while (($#)); do
        case "$1" in
            --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
            --port) port="${2:?--port needs a value}"; shift 2 ;;
            --owner-pid) owner="${2:?--owner-pid needs a value}"; shift 2 ;;
            *) die "unknown option $1 (see the top of $SCRIPT)" ;;
        esac
    done
    [[ -z "$port" || "$port" =~ ^[0-9]+$ ]] || die "--port must be a number, got $port"
    [[ -z "$owner" || "$owner" =~ ^[0-9]+$ ]] || die "--owner-pid must be a number, got $owner"
    case "$command" in
        fetch) cmd_fetch ;;
        start) cmd_start "$dir" "$port" "$owner" ;;
        stop) cmd_stop "$dir" ;;
        status) cmd_status "$dir" ;;
        *) die "usage: $0 fetch|start|stop|status [--dir DIR] [--port N] [--owner-pid PID]" ;;
    esac
}

main "$@"
