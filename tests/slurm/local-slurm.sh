#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the integration test (tests/test_slurm.py)
# and for trying the workflow's SLURM profile on a laptop:
#
#   sudo tests/slurm/local-slurm.sh start     # install (Debian/Ubuntu) and start munged, MariaDB,
#                                             # slurmdbd, slurmctld, slurmd; prints how to run the DAG
#   sudo tests/slurm/local-slurm.sh status    # sinfo + the recorded daemons
#   sudo tests/slurm/local-slurm.sh stop      # stops exactly the daemons `start` recorded, removes its configs
#   sudo tests/slurm/local-slurm.sh install   # only install the Debian packages (`start` does it too)
#
# Everything it writes lives under $LOCAL_SLURM_STATE (default /tmp/agnet-local-slurm), except
# /etc/slurm/{slurm,slurmdbd,gres}.conf (SLURM's clients read those paths) and a munge key if the
# machine has none. It refuses to touch a slurm.conf it did not write or to start beside a running
# SLURM. Accounting (slurmdbd) is on because the executor plugin polls job states with sacct.
# Knobs: LOCAL_SLURM_FAKE_GPUS (default 2: GRES "gpu" backed by /dev/null clones, so `--gpus=1`
# jobs schedule; CUDA is not there and the code falls back to the CPU), LOCAL_SLURM_ACCOUNT
# (default agnet), LOCAL_SLURM_SKIP_APT=1 (packages already installed).
set -euo pipefail

STATE=${LOCAL_SLURM_STATE:-/tmp/agnet-local-slurm}
ACCOUNT=${LOCAL_SLURM_ACCOUNT:-agnet}
FAKE_GPUS=${LOCAL_SLURM_FAKE_GPUS:-2}
CLUSTER=agnetlocal
PARTITION=debug
HOST=$(hostname -s)
MARKER="# written by agnet tests/slurm/local-slurm.sh"
DB_PORT=3319        # MariaDB on loopback only, beside any system database
RUN=$STATE/run LOG=$STATE/log
DB_SOCKET=$RUN/mysql/mariadb.sock
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

say() { printf '[local-slurm %(%T)T] %s\n' -1 "$*" >&2; }
die() { say "error: $*"; exit 1; }

pid_of() { [[ -s $RUN/$1.pid ]] && tr -dc '0-9' <"$RUN/$1.pid"; }
# running NAME: the PID recorded for daemon NAME is alive and still that program (guards PID reuse)
running() {
    local pid
    pid=$(pid_of "$1") || return 1
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    [[ $(</proc/"$pid"/comm) == "$1"* ]] && ! grep -q '^State:[[:space:]]*Z' /proc/"$pid"/status
}
until_ok() { # until_ok SECONDS WHAT COMMAND...: poll COMMAND twice a second
    local seconds=$1 what=$2
    shift 2
    for ((i = 0; i < seconds * 2; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "$what did not come up within ${seconds}s (logs: $LOG)"
}

install_packages() {
    [[ ${LOCAL_SLURM_SKIP_APT:-0} == 1 ]] && return 0
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # No init system in containers: the packages' own start attempts may fail; we start the daemons.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_configs() {
    local conf=/etc/slurm/slurm.conf
    if [[ -e $conf ]] && ! grep -qF "$MARKER" "$conf"; then
        die "$conf exists and was not written by this script: not touching a real cluster's configuration"
    fi
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/spool" "$LOG"
    chown slurm:slurm "$STATE/ctld" "$STATE/spool" "$LOG"
    local cpus sockets cores threads mem node_gres="" gres_lines=""
    read -r cpus sockets cores threads mem < <(slurmd -C | tr ' ' '\n' | awk -F= '
        {v[$1] = $2} END {print v["CPUs"], v["SocketsPerBoard"], v["CoresPerSocket"], v["ThreadsPerCore"], v["RealMemory"]}')
    mem=$((mem * 9 / 10)) # below what the kernel reports, or the node registers as "Low RealMemory"
    rm -f /etc/slurm/gres.conf
    if ((FAKE_GPUS > 0)); then
        for ((g = 0; g < FAKE_GPUS; g++)); do
            # slurmd wants a character device per GPU; a clone of /dev/null (1,3) does
            [[ -c /dev/agnet-fakegpu$g ]] || mknod -m 0666 /dev/agnet-fakegpu$g c 1 3
            echo "NodeName=$HOST Name=gpu File=/dev/agnet-fakegpu$g" >>/etc/slurm/gres.conf
        done
        node_gres="Gres=gpu:$FAKE_GPUS"
        gres_lines=$'GresTypes=gpu\nAccountingStorageTRES=gres/gpu'
    fi
    cat >"$conf" <<CONF
$MARKER ($(date -u +%FT%TZ)); state in $STATE
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
AuthType=auth/munge
SlurmUser=slurm
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# no cgroups in a container: track processes by parentage, no task confinement
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job without --mem would otherwise take the whole node
DefMemPerCPU=1000
# finished jobs stay visible to squeue (the plugin's fallback status command wants >= 120 s)
MinJobAge=300
ReturnToService=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStorageEnforce=associations
# keep the --comment the executor plugin gives every job (rule and wildcards) in sacct
AccountingStoreFlags=job_comment
$gres_lines
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$mem $node_gres State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
    cat >/etc/slurm/slurmdbd.conf <<CONF
$MARKER
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
SlurmUser=slurm
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=agnet-local
StorageLoc=slurm_acct_db
CONF
    chown slurm:slurm /etc/slurm/slurmdbd.conf
    chmod 0600 /etc/slurm/slurmdbd.conf
}

start_munge() {
    running munged && return 0
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        head -c 1024 /dev/urandom >/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge "$RUN/munge" && chown munge:munge /run/munge "$RUN/munge"
    say "starting munged"
    setpriv --reuid munge --regid munge --init-groups /usr/sbin/munged --force \
        --pid-file="$RUN/munge/munged.pid" --log-file="$RUN/munge/munged.log"
    until_ok 20 munged test -s "$RUN/munge/munged.pid"
    ln -sf munge/munged.pid "$RUN/munged.pid"
    until_ok 20 "munge" bash -c 'munge -n | unmunge'
}

start_mariadb() {
    running mariadbd && return 0
    local data=$STATE/mysql
    mkdir -p "$data" "$RUN/mysql" "$LOG/mysql" && chown mysql:mysql "$data" "$RUN/mysql" "$LOG/mysql"
    if [[ ! -d $data/mysql ]]; then
        say "initialising MariaDB in $data"
        mariadb-install-db --user=mysql --datadir="$data" --auth-root-authentication-method=socket \
            >"$LOG/mariadb-install.log" 2>&1
    fi
    say "starting mariadbd on 127.0.0.1:$DB_PORT"
    nohup /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$data" --socket="$DB_SOCKET" \
        --pid-file="$RUN/mysql/mariadbd.pid" --bind-address=127.0.0.1 --port=$DB_PORT \
        --log-error="$LOG/mysql/mariadb.err" --innodb-buffer-pool-size=32M >/dev/null 2>&1 </dev/null &
    until_ok 60 mariadbd mariadb-admin --socket="$DB_SOCKET" ping
    ln -sf mysql/mariadbd.pid "$RUN/mariadbd.pid"
    mariadb --socket="$DB_SOCKET" <<'SQL'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'agnet-local';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'agnet-local';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL
}

start_slurm() {
    if ! running slurmdbd; then
        say "starting slurmdbd"
        /usr/sbin/slurmdbd
        until_ok 60 slurmdbd sacctmgr -i -n list cluster
    fi
    # cluster, account and user associations (re-adding an existing one is a harmless error)
    sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
    sacctmgr -i -Q add account "$ACCOUNT" cluster="$CLUSTER" description=agnet organization=local >/dev/null 2>&1 || true
    local user
    for user in root ${SUDO_USER:-} ${LOCAL_SLURM_USERS:-}; do
        sacctmgr -i -Q add user "$user" account="$ACCOUNT" defaultaccount="$ACCOUNT" cluster="$CLUSTER" \
            >/dev/null 2>&1 || true
    done
    if ! running slurmctld; then
        say "starting slurmctld"
        /usr/sbin/slurmctld -i # -i: ignore state left by an earlier configuration
        until_ok 60 slurmctld scontrol ping
    fi
    if ! running slurmd; then
        say "starting slurmd"
        /usr/sbin/slurmd -N "$HOST"
    fi
    until_ok 90 "node $HOST" node_idle
}

node_idle() {
    case $(sinfo -h -n "$HOST" -o %T 2>/dev/null) in
        idle | mixed | allocated) return 0 ;;
        down* | drain* | fail*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 ;;
    esac
    return 1
}

stop_daemon() { # stop_daemon NAME: TERM the recorded PID (never by name), KILL after 30 s
    local pid
    running "$1" || { rm -f "$RUN/$1.pid"; return 0; }
    pid=$(pid_of "$1")
    say "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 60; i++)); do running "$1" || break; sleep 0.5; done
    if running "$1"; then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$RUN/$1.pid"
}

case ${1:-} in
    install)  # the packages only (CI installs them while it installs Python packages)
        [[ $EUID -eq 0 ]] || die "run as root (it installs packages)"
        install_packages
        ;;
    start)
        [[ $EUID -eq 0 ]] || die "run as root (it installs packages and starts daemons)"
        if ! running slurmctld && timeout 5 scontrol ping 2>/dev/null | grep -q UP; then
            die "a SLURM controller not started by this script is already answering"
        fi
        mkdir -p "$RUN" "$LOG"
        install_packages
        write_configs
        start_munge
        start_mariadb
        start_slurm
        sinfo >&2
        cat >&2 <<TXT
The cluster is up (partition $PARTITION, account $ACCOUNT, $FAKE_GPUS fake GPUs). Try the profile on it:
  python tests/slurm/site_profile.py --out $STATE/profile --partition $PARTITION --account $ACCOUNT
  snakemake --profile $STATE/profile --configfile workflow/configs/demo.yaml
Stop it: $0 stop
TXT
        ;;
    status)
        for d in munged mariadbd slurmdbd slurmctld slurmd; do
            if running $d; then echo "$d running (pid $(pid_of $d))"; else echo "$d not running"; fi
        done
        running slurmctld && sinfo
        ;;
    stop)
        # cancel this cluster's jobs first so their steps end cleanly (an RPC, nothing killed by name)
        if running slurmctld; then
            jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ' || true)
            [[ -n ${jobs// /} ]] && { say "cancelling jobs $jobs"; timeout 10 scancel $jobs || true; sleep 2; }
        fi
        for d in slurmd slurmctld slurmdbd mariadbd munged; do stop_daemon $d; done
        # and the configuration it wrote: with a slurm.conf and no controller, every SLURM client (and so every
        # Snakemake start, whose SLURM plugin runs `scontrol show config` on import) waits ~9 s for a timeout
        if [[ -e /etc/slurm/slurm.conf ]] && grep -qF "$MARKER" /etc/slurm/slurm.conf; then
            rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf /etc/slurm/slurmdbd.conf
        fi
        ;;
    *) die "usage: $0 {install|start|status|stop}" ;;
esac
